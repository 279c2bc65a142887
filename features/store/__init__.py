"""The Feast feature store: repo, materialization, the online writer and the feature reader."""
