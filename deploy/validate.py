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
  {{ .Chart.Version }}, {{ .Chart.AppVersion }}, each optionally `| quote` or `| toJson`;
  and {{ if REFERENCE }} ... {{ else }} ... {{ end }} on Go's truthiness (false, 0, "", empty
  lists and maps are false); `{{-` and `-}}` trim whitespace as in Go. Anything else is an
  error, which keeps the templates simple enough for this to be faithful.
- Objects of cert-manager's API (cert-manager.io/v1 Certificate), which the Kubernetes
  schemas do not cover, against deploy/schemas/ (the fields the chart uses, strict).
- deploy/manifests/*.yaml must be the chart rendered with its default values (release
  `sidewall` in namespace `sidewall-system`), plus the Namespace.

Usage: validate.py [--render-only] [--set key=value ...]
With --set, the chart rendered with those values is validated (and not compared with
deploy/manifests).
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

ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
REFERENCE = re.compile(r"^\s*\.(Values|Release|Chart)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*(?:\|\s*(quote|toJson)\s*)?$")
CONDITION = re.compile(r"^\s*if\s+(.*?)\s*$", re.S)
SCHEMAS = DEPLOY / "schemas"
# API groups of other projects' CRDs that the chart may create, validated against SCHEMAS.
EXTENSIONS = {"cert-manager.io"}


def scalar(value):
    """A value as Go's text/template prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{value!r} is not a scalar: templates may reference scalars only")
    return str(value)


def lookup(ref, values, chart, origin, action):
    root, path = ref.group(1), ref.group(2).split(".")[1:]
    node = {"Values": values, "Release": RELEASE, "Chart": chart}[root]
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{origin}: {action!r}: no such value")
        node = node[key]
    return node


def tokens(text, origin):
    """Text and actions, with `{{-` and `-}}` trimming the whitespace beside them."""
    out, pos = [], 0
    for m in ACTION.finditer(text):
        out.append(["text", text[pos : m.start()]])
        if m.group(1) == "-" and out[-1][0] == "text":
            out[-1][1] = out[-1][1].rstrip()
        out.append(["action", m.group(2), m.group(3) == "-", m.group(0)])
        pos = m.end()
    out.append(["text", text[pos:]])
    for i, t in enumerate(out):
        if t[0] == "action" and t[2] and i + 1 < len(out):
            out[i + 1][1] = out[i + 1][1].lstrip()
    return out


def render_text(text, values, chart, origin):
    out = []
    # One entry per open `if`: (rendering this branch?, was the whole if rendered?)
    stack = []
    for t in tokens(text, origin):
        live = all(on for on, _ in stack)
        if t[0] == "text":
            if live:
                out.append(t[1])
            continue
        body, whole = t[1].strip(), t[3]
        cond = CONDITION.match(body)
        if cond:
            ref = REFERENCE.match(cond.group(1))
            if not ref or ref.group(3):
                raise ValueError(f"{origin}: unsupported condition {whole!r}")
            stack.append((bool(lookup(ref, values, chart, origin, whole)), live))
        elif body == "else":
            if not stack:
                raise ValueError(f"{origin}: {whole!r} without if")
            on, outer = stack.pop()
            stack.append((not on, outer))
        elif body == "end":
            if not stack:
                raise ValueError(f"{origin}: {whole!r} without if")
            stack.pop()
        else:
            ref = REFERENCE.match(body)
            if not ref:
                raise ValueError(f"{origin}: unsupported template construct {whole!r}")
            node = lookup(ref, values, chart, origin, whole)
            if not live:
                continue
            if ref.group(3) == "toJson":
                out.append(json.dumps(node, separators=(",", ":")))
            elif ref.group(3) == "quote":
                out.append(json.dumps(scalar(node)))
            else:
                out.append(scalar(node))
    if stack:
        raise ValueError(f"{origin}: {len(stack)} if without end")
    return "".join(out)


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


def validate_extension(origin, doc, errors):
    """Objects of APIs the Kubernetes schemas do not cover, against deploy/schemas/."""
    group = doc.get("apiVersion", "").split("/")[0]
    path = SCHEMAS / f"{group}-{doc.get('kind', '').lower()}.json"
    if not path.exists():
        errors.append(f"{origin}: {doc.get('kind')} of {doc.get('apiVersion')}: no schema in {SCHEMAS}")
        return
    for e in jsonschema.Draft7Validator(json.loads(path.read_text())).iter_errors(doc):
        where = "/".join(str(p) for p in e.path)
        errors.append(f"{origin}: {doc.get('kind')} {key(doc)[2]}: {where}: {e.message}")


def validate_kubernetes(docs, errors):
    count = 0
    for origin, doc in docs:
        if doc.get("apiVersion", "").split("/")[0] in EXTENSIONS:
            validate_extension(origin, doc, errors)
            count += 1
            continue
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
    if not args.set:
        for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
            docs += load(path)
        docs += load(CRD) + load(CHART / "crds" / CRD.name)
        for path in sorted(SCENARIOS.glob("*/pod.yaml")):
            docs += load(path)
    n = validate_kubernetes(docs, errors)
    p = validate_policies(errors)
    if not args.set:
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
