"""The Feast repo definition: entities, sources, feature views, on-demand views, feature services.

``definitions.objects(feature_dir)`` builds the objects over the snapshot parquet in ``feature_dir``.
``features.store.repo.render_repo`` renders a home's Feast repo into ``$CARECAST_HOME/feature_repo``:
``feature_store.yaml`` from settings, and ``carecast_repo.py``, which binds these objects at module level over the
home's snapshot folder so that Feast's own CLI (`feast plan`, `feast apply`, `feast ui`) sees the repo that
``features.store.repo.apply`` registers. The folder also holds the registry and the SQLite online store.
"""
