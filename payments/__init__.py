"""The composition root: the `payments` command, `payments up` (the embedded
stack and the node processes), and the one place that wires the simulators
and the bench into commands. Nothing in the library packages imports it."""
