#!/usr/bin/env python3
"""Schema validation of everything sidewall deploys, offline.

- Kubernetes objects (deploy/manifests, the Helm chart rendered with its default values, the
  CRDs, and the scenario catalog's Pod manifests) against the Kubernetes JSON schemas bundled
  in the PyPI package `kubernetes-validate`, in strict mode (unknown fields are errors), for
  the oldest and the newest Kubernetes version checked here.
- SidecarPolicy documents (the scenario catalog's policy.yaml files) against the
  openAPIV3Schema of the CRD, with `jsonschema`.
- The chart's templates are rendered here, without helm (helm is not installable from the
  package registries this project uses). The renderer knows plain references only:
  {{ .Values.a.b }}, {{ .Release.Name }}, {{ .Release.Namespace }}, {{ .Chart.Name }},
  {{ .Chart.Version }}, {{ .Chart.AppVersion }}, each optionally `| quote`. Anything else is
  an error, which keeps the templates simple enough for this to be faithful.
- deploy/manifests/*.yaml must be the chart rendered with its default values (release
  `sidewall` in namespace `sidewall-system`), plus the Namespace.

Usage: validate.py [--render-only] [--set key=value ...]
Exit status 0 when everything validates; 1 with the reasons otherwise; 3 when the
`kubernetes-validate` package is missing.
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "sidewall"
CRD = DEPLOY / "crds" / "sidecarpolicies.sidewall.io.yaml"
SCENARIOS = ROOT / "tests" / "scenarios"
RELEASE = {"Name": "sidewall", "Namespace": "sidewall-system"}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema set.
VERSIONS = ["1.27.0", None]

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - reported to the test
    print(
        f"missing Python package ({e.name}): install `kubernetes-validate` from PyPI "
        "(python3 -m pip install kubernetes-validate; scripts/setup.sh does it)",
        file=sys.stderr,
    )
    sys.exit(3)

TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
REFERENCE = re.compile(r"^\s*\.(Values|Release|Chart)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*(\|\s*quote\s*)?$")


def scalar(value):
    """A value as Go's text/template prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{value!r} is not a scalar: templates may reference scalars only")
    return str(value)


def render_text(text, values, chart, origin):
    def substitute(m):
        ref = REFERENCE.match(m.group(1))
        if not ref:
            raise ValueError(f"{origin}: unsupported template construct {m.group(0)!r}")
        root, path, quote = ref.group(1), ref.group(2).split(".")[1:], ref.group(3)
        node = {"Values": values, "Release": RELEASE, "Chart": chart}[root]
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"{origin}: {m.group(0)!r}: no such value")
            node = node[key]
        out = scalar(node)
        return json.dumps(out) if quote else out

    return TEMPLATE.sub(substitute, text)


def set_value(values, assignment):
    key, _, raw = assignment.partition("=")
    node = values
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(raw)


def render_chart(overrides=()):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for o in overrides:
        set_value(values, o)
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    chart = {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")}
    docs = []
    for path in sorted((CHART / "templates").glob("*.yaml")):
        text = render_text(path.read_text(), values, chart, path.relative_to(ROOT))
        docs += [(f"{path.relative_to(ROOT)} (rendered)", d) for d in yaml.safe_load_all(text) if d]
    return docs


def load(path):
    return [(str(path.relative_to(ROOT)), d) for d in yaml.safe_load_all(path.read_text()) if d]


def key(doc):
    meta = doc.get("metadata", {})
    return (doc.get("kind"), meta.get("namespace", ""), meta.get("name"))


def validate_kubernetes(docs, errors):
    count = 0
    for origin, doc in docs:
        for version in VERSIONS:
            v = version or kubernetes_validate.latest_version()
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errors.append(f"{origin}: {doc.get('kind')} {key(doc)[2]} (Kubernetes {v}): {path}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                errors.append(f"{origin}: {doc.get('kind')}: no schema for Kubernetes {v}: {e}")
        count += 1
    return count


def crd_schema():
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    return crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"]


def validate_policies(errors):
    group, version, kind, schema = crd_schema()
    validator = jsonschema.Draft7Validator(schema)
    count = 0
    for path in sorted(SCENARIOS.glob("*/policy.yaml")):
        for origin, doc in load(path):
            if doc.get("apiVersion") != f"{group}/{version}" or doc.get("kind") != kind:
                errors.append(f"{origin}: not a {group}/{version} {kind}")
                continue
            for e in validator.iter_errors(doc):
                where = "/".join(str(p) for p in e.path)
                errors.append(f"{origin}: {where}: {e.message}")
            count += 1
    return count


def compare_manifests(rendered, errors):
    plain = []
    for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
        plain += load(path)
    plain_by_key = {key(d): (o, d) for o, d in plain if d.get("kind") != "Namespace"}
    rendered_by_key = {key(d): (o, d) for o, d in rendered}
    for k in sorted(set(plain_by_key) | set(rendered_by_key), key=str):
        if k not in rendered_by_key:
            errors.append(f"{plain_by_key[k][0]}: {k} is not in the chart")
        elif k not in plain_by_key:
            errors.append(f"deploy/manifests: {k} of the chart is missing")
        elif plain_by_key[k][1] != rendered_by_key[k][1]:
            errors.append(f"{plain_by_key[k][0]}: {k} differs from the chart rendered with its default values")
    if not any(d.get("kind") == "Namespace" and d["metadata"]["name"] == RELEASE["Namespace"] for _, d in plain):
        errors.append(f"deploy/manifests: no Namespace {RELEASE['Namespace']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render-only", action="store_true", help="print the rendered chart and exit")
    ap.add_argument("--set", action="append", default=[], help="override a value: key.path=value")
    args = ap.parse_args()

    errors = []
    try:
        rendered = render_chart(args.set)
    except ValueError as e:
        print(f"rendering the chart: {e}", file=sys.stderr)
        return 1
    if args.render_only:
        print("\n---\n".join(yaml.safe_dump(d, sort_keys=False) for _, d in rendered), end="")
        return 0

    docs = list(rendered)
    for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
        docs += load(path)
    docs += load(CRD) + load(CHART / "crds" / CRD.name)
    for path in sorted(SCENARIOS.glob("*/pod.yaml")):
        docs += load(path)
    n = validate_kubernetes(docs, errors)
    p = validate_policies(errors)
    compare_manifests(rendered, errors)
    kind = yaml.safe_load((DEPLOY / "kind" / "cluster.yaml").read_text())
    if (kind.get("apiVersion"), kind.get("kind")) != ("kind.x-k8s.io/v1alpha4", "Cluster") or not kind.get("nodes"):
        errors.append("deploy/kind/cluster.yaml: not a kind.x-k8s.io/v1alpha4 Cluster with nodes")

    versions = ", ".join(v or kubernetes_validate.latest_version() for v in VERSIONS)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: {n} Kubernetes objects (Kubernetes {versions}, strict) and {p} SidecarPolicy documents valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
