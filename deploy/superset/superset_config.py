"""Superset settings of the throwaway instance that deploy/superset/try starts: SQLite metadata
under $SUPERSET_HOME, no Redis, no async queries. Not for production (see deploy/compose and
deploy/k8s for the served dashboards)."""
import os

SECRET_KEY = os.environ.get("SUPERSET_SECRET_KEY", "rainbow-throwaway-superset-not-secret")
SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.path.join(os.environ["SUPERSET_HOME"], "superset.db")
CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
RATELIMIT_STORAGE_URI = "memory://"
RESULTS_BACKEND = None
FEATURE_FLAGS = {"GLOBAL_ASYNC_QUERIES": False, "ALERT_REPORTS": False, "THUMBNAILS": False}
WTF_CSRF_ENABLED = False
TALISMAN_ENABLED = False
CONTENT_SECURITY_POLICY_WARNING = False
