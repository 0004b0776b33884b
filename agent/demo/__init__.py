"""The demo line: an agent with random weights, a simulated camera and PLC, and the
synthetic brake-disc crops they send (``discs``, which the test suite uses too).

``python -m agent.demo`` (or ``make demo``) runs it; ``main`` holds the orchestration.
"""
