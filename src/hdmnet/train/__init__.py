"""Training engines: base learner and meta learner."""
