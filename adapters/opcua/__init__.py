"""The OPC UA adapter (contract section 10): ``adapter`` runs an asyncua server on a thread
of its own and feeds it the core's events, ``nodes`` is the address space (the agent's and
every ROI's variables, the alert event type), ``inspection`` is the ``Inspect`` method, and
``security`` decides who may connect and how."""
