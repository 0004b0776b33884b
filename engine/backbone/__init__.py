"""The backbone: weights, runtimes behind one interface, and the trial that picks one."""
