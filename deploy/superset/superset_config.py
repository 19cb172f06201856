"""Superset settings of the local stack's instance (deploy/local/start): SQLite metadata under
$SUPERSET_HOME, no Redis, no async queries, the secret key from SUPERSET_SECRET_KEY (generated at
the first start into $SUPERSET_HOME/credentials.env). deploy/compose and deploy/k8s serve the
same dashboard from the apache/superset image with its own settings."""
import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.path.join(os.environ["SUPERSET_HOME"], "superset.db")
CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
RATELIMIT_STORAGE_URI = "memory://"
RESULTS_BACKEND = None
FEATURE_FLAGS = {"GLOBAL_ASYNC_QUERIES": False, "ALERT_REPORTS": False, "THUMBNAILS": False}
# Served on 127.0.0.1 over plain HTTP: no HTTPS-only headers or cookies.
TALISMAN_ENABLED = False
SESSION_COOKIE_SECURE = False
CONTENT_SECURITY_POLICY_WARNING = False
# A dashboard of live figures: charts ask ClickHouse again at every load.
SUPERSET_WEBSERVER_TIMEOUT = 120
