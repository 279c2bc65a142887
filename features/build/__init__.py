"""The snapshot build: feeds -> point-in-time patient snapshots, labels and population defaults."""
