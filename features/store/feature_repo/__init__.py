"""The Feast repo definition: entities, sources, feature views, on-demand views, feature services.

``definitions.objects(feature_dir)`` builds the objects over the snapshot parquet in ``feature_dir``;
``features.store.repo.apply`` renders ``feature_store.yaml`` from settings into ``$CARECAST_HOME/feature_repo``
(which holds the registry and the SQLite online store) and applies these objects there.
"""
