"""Write argocd-cm-patch.yaml from mnistmodel-health.lua (the one source of the health check).

python manifests/argocd/render_health_snippet.py          # rewrite the patch
python manifests/argocd/render_health_snippet.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "mnistmodel-health.lua"
PATCH = HERE / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.aidevsecops.dev_MnistModel"

HEADER = """\
# GENERATED from mnistmodel-health.lua by render_health_snippet.py: edit the .lua file, then run
#   python manifests/argocd/render_health_snippet.py
# The MnistModel health check for Argo CD, as a patch of its argocd-cm ConfigMap:
#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-patch.yaml
# or list this file under `patches:` in the kustomization that installs Argo CD.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def render(lua: str) -> str:
    if not lua.endswith("\n") or any(line != line.rstrip() for line in lua.splitlines()):
        # A YAML literal block keeps exactly one final newline and cannot hold trailing blanks.
        raise ValueError(f"{LUA.name}: end with one newline and strip trailing whitespace")
    body = "".join(f"    {line}\n" if line else "\n" for line in lua.splitlines())
    return f"{HEADER}  {KEY}: |\n{body}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only verify that the patch is up to date")
    args = parser.parse_args(argv)
    wanted = render(LUA.read_text())
    if args.check:
        if not PATCH.exists() or PATCH.read_text() != wanted:
            print(f"{PATCH} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    PATCH.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
