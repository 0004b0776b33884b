"""The MQTT adapter (contract section 5): ``adapter`` subscribes and replies, ``topics``
names and encodes, ``outbox`` is the publishing thread, ``spool`` keeps replies on disk
while the broker is away, ``repeats`` recognises QoS 1 redeliveries."""
