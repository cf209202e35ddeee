"""Render every kustomize overlay under deploy/k8s/overlays and validate it offline.

Each overlay is rendered with `kubectl kustomize` and checked by `kubernetes-validate
--strict` against the bundled OpenAPI schemas of one Kubernetes version (no cluster, no
network). Kinds from CRDs that the validator has no schema for (the Prometheus Operator's)
are allowed by name; any other warning or error fails the check. `make k8s-lint` (part of
`make lint`) runs this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
# CRD kinds the validator has no schema for; anything else unknown is an error.
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")


def render(kubectl: str, overlay: Path) -> str:
    """The overlay's manifests as one YAML stream.

    Raises:
        RuntimeError: kustomize refused the overlay.
    """
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{overlay}: kubectl kustomize failed:\n{result.stderr}")
    return result.stdout


def validate(rendered: str, name: str, kubernetes_version: str) -> list[str]:
    """The problems kubernetes-validate --strict finds in `rendered` (empty: valid)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{name}.yaml"
        path.write_text(rendered)
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "kubernetes-validate"),
                "--strict",
                "--kubernetes-version",
                kubernetes_version,
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("INFO") or not line.strip():
            continue
        if line.startswith("WARN") and any(f"kind {kind} " in line for kind in CRD_KINDS):
            continue
        problems.append(line)
    if result.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited with {result.returncode}")
    return problems


def check(kubectl: str, overlays: list[Path], kubernetes_version: str) -> list[str]:
    """Every problem of every overlay, each line prefixed by the overlay's name."""
    problems = []
    for overlay in overlays:
        try:
            rendered = render(kubectl, overlay)
        except RuntimeError as exc:
            problems.append(str(exc))
            continue
        problems += [
            f"{overlay.name}: {p}" for p in validate(rendered, overlay.name, kubernetes_version)
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Checks the overlays; prints each problem and exits 1 when there is any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("overlays", nargs="*", type=Path)
    args = parser.parse_args(argv)
    overlays = args.overlays or sorted(p for p in OVERLAYS.iterdir() if p.is_dir())
    problems = check(args.kubectl, overlays, args.kubernetes_version)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    names = ", ".join(p.name for p in overlays)
    print(f"k8s-lint: {names} render and validate (Kubernetes {args.kubernetes_version}, strict)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
