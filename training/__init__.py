"""Training: the three CareCast models (no-show, churn, preferred channel), tracked in MLflow.

One code path for all three targets: ``train.train_target`` loads the training frame from the
feature store, splits it by time, fits XGBoost with early stopping, calibrates on the validation
window, evaluates on the test window beside baselines and the synthetic oracle, and registers the
model as ``challenger``. ``gate.promote`` decides whether the challenger becomes ``champion``.
"""
