#!/usr/bin/env python3
"""Schema validation of everything sidewall deploys, offline.

- The Helm chart, rendered by a real `helm template` (scripts/setup.sh installs helm) with its
  default values and with each values file of deploy/helm/sidewall/ci/ (metrics, TLS, runtime
  hook, what operators set), each for the oldest Kubernetes the chart supports (Chart.yaml
  kubeVersion) and for the newest schema set here (`--kube-version`, as a cluster of that
  version would render it). Every object is validated against the Kubernetes JSON schemas
  bundled in the PyPI package `kubernetes-validate`, in strict mode (unknown fields are
  errors), for that same version.
- deploy/manifests, the CRDs and the scenario catalog's Pod manifests, the same way.
- SidecarPolicy documents (the scenario catalog's policy.yaml files) against the
  openAPIV3Schema of the CRD, with `jsonschema`.
- Objects of other projects' APIs the chart may create (cert-manager.io/v1 Certificate,
  monitoring.coreos.com/v1 ServiceMonitor), which the Kubernetes schemas do not cover,
  against deploy/schemas/ (the fields the chart uses, strict).
- deploy/manifests/*.yaml must be the chart rendered with its default values (release
  `sidewall` in namespace `sidewall-system`, newest Kubernetes), plus the Namespace.

Usage: validate.py [--render-only] [-f values.yaml ...] [--set key=value ...]
With -f or --set, only the chart rendered with those values is validated.
Exit status 0 when everything validates; 1 with the reasons otherwise; 3 when the
`kubernetes-validate` package or helm is missing.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
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

SCHEMAS = DEPLOY / "schemas"
# API groups of other projects' CRDs that the chart may create, validated against SCHEMAS.
EXTENSIONS = {"cert-manager.io", "monitoring.coreos.com"}
# The values files of the chart's CI runs, besides its defaults.
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
SOURCE = re.compile(r"^# Source: (\S+)", re.M)


def helm():
    """helm: $HELM, the one scripts/setup.sh installs, or the PATH's."""
    for candidate in (os.environ.get("HELM"), "/opt/sidewall-tools/helm", shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    print("helm is missing: scripts/setup.sh installs it into /opt/sidewall-tools", file=sys.stderr)
    sys.exit(3)


def render_chart(overrides=(), values_files=(), kube_version=None):
    """The chart as `helm template` renders it: (origin, object) pairs."""
    version = kube_version or kubernetes_validate.latest_version()
    cmd = [helm(), "template", RELEASE["Name"], str(CHART), "--namespace", RELEASE["Namespace"]]
    cmd += ["--kube-version", version]
    for f in values_files:
        cmd += ["--values", str(f)]
    for o in overrides:
        # Lists and maps as JSON (`--set a=[x]` would be a string to helm).
        raw = o.partition("=")[2].lstrip()
        cmd += ["--set-json" if raw[:1] in ("[", "{") else "--set", o]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"helm template {' '.join(cmd[3:])}: {out.stderr.strip()}")
    docs = []
    for text in re.split(r"(?m)^---\s*$", out.stdout):
        source = SOURCE.search(text)
        doc = yaml.safe_load(text)
        if doc:
            origin = f"deploy/helm/{source.group(1) if source else 'sidewall'} (rendered, Kubernetes {version})"
            docs.append((origin, doc))
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


def validate_kubernetes(docs, errors, versions=VERSIONS):
    count = 0
    for origin, doc in docs:
        if doc.get("apiVersion", "").split("/")[0] in EXTENSIONS:
            validate_extension(origin, doc, errors)
            count += 1
            continue
        for version in versions:
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
    # The CRDs are applied from deploy/crds/.
    rendered_by_key = {key(d): (o, d) for o, d in rendered if d.get("kind") != "CustomResourceDefinition"}
    for k in sorted(set(plain_by_key) | set(rendered_by_key), key=str):
        if k not in rendered_by_key:
            errors.append(f"{plain_by_key[k][0]}: {k} is not in the chart")
        elif k not in plain_by_key:
            errors.append(f"deploy/manifests: {k} of the chart is missing")
        elif plain_by_key[k][1] != rendered_by_key[k][1]:
            errors.append(
                f"{plain_by_key[k][0]}: {k} differs from the chart rendered with its default values "
                "(deploy/validate.py --write-manifests writes it again)"
            )
    if not any(d.get("kind") == "Namespace" and d["metadata"]["name"] == RELEASE["Namespace"] for _, d in plain):
        errors.append(f"deploy/manifests: no Namespace {RELEASE['Namespace']}")


MANIFESTS_HEADER = """\
# sidewall without helm: the chart (deploy/helm/sidewall) rendered with its default values,
# release "sidewall" in namespace "sidewall-system" (deploy/validate.py --write-manifests
# writes it; the tests check that both agree), for Kubernetes 1.30 and later (before 1.30 the
# AppArmor profile is an annotation: install the chart, which renders it for the cluster's version).
#   kubectl apply -f deploy/crds/ -f deploy/manifests/namespace.yaml -f deploy/manifests/sidewall.yaml
"""


def write_manifests(rendered):
    docs = [d for _, d in rendered if d.get("kind") != "CustomResourceDefinition"]
    text = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    (DEPLOY / "manifests" / "sidewall.yaml").write_text(MANIFESTS_HEADER + text)


def render_runs(values_files, overrides):
    """(name, files) of each rendering to check: the given values, or the defaults and each
    values file of the chart's ci/."""
    if values_files or overrides:
        return [("the given values", values_files)]
    return [("defaults", [])] + [(f.name, [f]) for f in VALUES_FILES]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render-only", action="store_true", help="print the rendered chart and exit")
    ap.add_argument("--write-manifests", action="store_true", help="write deploy/manifests/sidewall.yaml")
    ap.add_argument("-f", "--values", action="append", default=[], help="a values file")
    ap.add_argument("--set", action="append", default=[], help="override a value: key.path=value")
    args = ap.parse_args()

    errors, n, default = [], 0, None
    try:
        if args.render_only:
            rendered = render_chart(args.set, args.values)
            print("\n---\n".join(yaml.safe_dump(d, sort_keys=False) for _, d in rendered), end="")
            return 0
        if args.write_manifests:
            write_manifests(render_chart())
            return 0
        runs = render_runs(args.values, args.set)
        for name, files in runs:
            for version in VERSIONS:
                rendered = render_chart(args.set, files, version)
                n += validate_kubernetes(rendered, errors, [version])
                if name == "defaults" and version is None:
                    default = rendered
    except ValueError as e:
        print(f"rendering the chart: {e}", file=sys.stderr)
        return 1

    if default is not None:
        # Rendered for the newest Kubernetes: the AppArmor field needs 1.30 (older: the chart).
        manifests = []
        for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
            manifests += load(path)
        n += validate_kubernetes(manifests, errors, [None])
        docs = load(CRD) + load(CHART / "files" / "crds" / CRD.name)
        for path in sorted(SCENARIOS.glob("*/pod.yaml")):
            docs += load(path)
        n += validate_kubernetes(docs, errors)
        compare_manifests(default, errors)
    p = validate_policies(errors)
    kind = yaml.safe_load((DEPLOY / "kind" / "cluster.yaml").read_text())
    if (kind.get("apiVersion"), kind.get("kind")) != ("kind.x-k8s.io/v1alpha4", "Cluster") or not kind.get("nodes"):
        errors.append("deploy/kind/cluster.yaml: not a kind.x-k8s.io/v1alpha4 Cluster with nodes")

    versions = ", ".join(v or kubernetes_validate.latest_version() for v in VERSIONS)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    rendered_with = ", ".join(name for name, _ in runs)
    print(
        f"ok: {n} Kubernetes objects (Kubernetes {versions}, strict; the chart rendered by helm with "
        f"{rendered_with}) and {p} SidecarPolicy documents valid"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
