"""Imports the packed Rainbow dashboard (deploy/superset/pack) into Superset, replacing what an
earlier import left: its ClickHouse connection, datasets, charts and the dashboard.
`superset import-dashboards` overwrites only the dashboard and keeps existing datasets, charts
and connections as they were, so a changed chart or a moved warehouse would never apply.

Usage (with Superset's python and its settings in the environment):
    python import_bundle.py BUNDLE.zip USERNAME
"""
import sys
from zipfile import ZipFile

import yaml


def main() -> int:
    path, username = sys.argv[1], sys.argv[2]
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from flask import g

        from superset import security_manager
        from superset.commands.importers.v1.assets import ImportAssetsCommand
        from superset.commands.importers.v1.utils import get_contents_from_bundle

        g.user = security_manager.find_user(username=username)
        if g.user is None:
            print(f"import_bundle: no Superset user {username!r}", file=sys.stderr)
            return 1
        with ZipFile(path) as bundle:
            contents = get_contents_from_bundle(bundle)
        # The bundle is a dashboard export; as "assets" every part of it is overwritten.
        meta = "metadata.yaml"
        metadata = yaml.safe_load(contents[meta])
        metadata["type"] = "assets"
        contents[meta] = yaml.safe_dump(metadata)
        ImportAssetsCommand(contents).run()
        print(f"import_bundle: imported {len(contents) - 1} files from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
