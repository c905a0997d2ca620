"""Building the world model and agents: data collection, training, pipelines."""
