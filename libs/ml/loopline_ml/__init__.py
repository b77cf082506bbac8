"""What the trainer, inference and the monitor share about models: the network, the artifact, drift."""
