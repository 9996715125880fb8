#!/usr/bin/env bash
# The package as a user gets it: build the sdist and, from it, the wheel (`python -m build`), install the
# wheel into a fresh venv and use it there: `reidkit --help`, `reidkit recipes`, a packaged recipe,
# the version, every tracked file of reidkit/ in the wheel, and a tiny `reidkit extract`.
#
# The venv: torch & co are huge, so the venv sees the system's site-packages, but not through
# --system-site-packages: that would run the system's .pth files, among them the editable install's
# (__editable__.reidkit-*.pth), whose finder answers `import reidkit.<x>` from the source tree for any
# module missing from the wheel. Instead the wheel goes into a plain venv (--no-deps) and one .pth in
# the venv appends the system's site-packages after the venv's own; .pth files inside an appended
# folder are not run, so the editable finder never loads and reidkit (code, data, metadata) can only
# come from the wheel. The wheel's declared dependencies are then checked against what the venv sees.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python}
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH
TMP=$(mktemp -d "${TMPDIR:-/tmp}/reidkit-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
step() { printf '\n--- wheel smoke: %s (%ss)\n' "$1" "$SECONDS"; }

step "build sdist + wheel"
"$PY" -m build --outdir "$TMP/dist" . >"$TMP/build.log" 2>&1 || { tail -40 "$TMP/build.log"; exit 1; }
WHEEL=$(ls "$TMP"/dist/reidkit-*.whl)
ls -l "$TMP/dist" | tail -n +2

step "fresh venv, the wheel only"
"$PY" -m venv --without-pip "$TMP/venv"
VPY="$TMP/venv/bin/python"
VSITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
  >"$VSITE/zz_system_site_packages.pth"
"$PY" -m pip --python "$VPY" install --no-deps --no-index --quiet "$WHEEL"

cd "$TMP"  # never the repository's folder: reidkit must not be importable from the source tree
step "reidkit comes from the wheel"
"$VPY" - "$TMP/venv" "$WHEEL" "$REPO" <<'PY'
import importlib.metadata as md, subprocess, sys, zipfile
from pathlib import Path
venv, wheel, repo = Path(sys.argv[1]).resolve(), sys.argv[2], Path(sys.argv[3])
import reidkit
where = Path(reidkit.__file__).resolve()
print("reidkit from", where)
assert venv in where.parents, f"reidkit imported from {where}, not from the venv {venv}"
finders = [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path]
assert not any("Editable" in f for f in finders), f"an editable finder leaked into the venv: {finders}"
dist = md.distribution("reidkit")
assert venv in Path(dist.locate_file("")).resolve().parents, f"metadata from {dist.locate_file('')}"
assert reidkit.__version__ == md.version("reidkit") != "0+unknown", (reidkit.__version__, md.version("reidkit"))
print("version", reidkit.__version__)
# the wheel's requirements (not those of its extras) are met by what the venv sees
from packaging.requirements import Requirement
unmet = []
for line in md.requires("reidkit") or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(have, prereleases=True):
        unmet.append(f"{req} (found {have})")
assert not unmet, f"the wheel's requirements are not met: {unmet}"
# every file of reidkit/ that git tracks is in the wheel (code and package data alike)
try:
    tracked = subprocess.run(["git", "-C", str(repo), "ls-files", "reidkit"], capture_output=True, text=True,
                             check=True).stdout.split()
except (OSError, subprocess.CalledProcessError):
    tracked = []  # not a git checkout: the checks below still run
names = set(zipfile.ZipFile(wheel).namelist())
missing = [f for f in tracked if f not in names and (repo / f).is_file()]  # (a tracked file deleted here is not)
assert not missing, f"{len(missing)} tracked file(s) of reidkit/ missing from the wheel: {missing[:10]}"
print(f"{len(tracked)} tracked files of reidkit/ all in the wheel ({len(names)} entries)")
PY
RK="$TMP/venv/bin/reidkit"

step "reidkit --help / --version / recipes"
"$RK" --help >help.txt && grep -q "extract" help.txt
[ "$("$RK" --version)" = "$("$VPY" -c 'import importlib.metadata as m; print(m.version("reidkit"))')" ]
"$RK" recipes >recipes.txt
N=$(grep -c '^[a-z0-9_][a-z0-9_]* ' recipes.txt || true); HAVE=$(ls "$REPO"/reidkit/configs/*.yaml | wc -l)
echo "reidkit recipes: $N recipes (reidkit/configs: $HAVE)"
grep -q '^bot_r50 ' recipes.txt && [ "$N" -eq "$HAVE" ] || { echo "reidkit recipes does not list the packaged recipes"; cat recipes.txt; exit 1; }

step "a packaged recipe loads"
"$VPY" -c 'from reidkit.config import load_config; c = load_config("bot_r50"); print("bot_r50:", c.model.backbone, c.solver.max_epochs, "epochs")'

step "tiny extract"
"$VPY" - <<'PY'
from pathlib import Path
import numpy as np
from PIL import Image
from reidkit.models.build import ModelConfig, build_model, save_model
rng = np.random.default_rng(0)
Path("crops").mkdir()
for i in range(2):
    Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(f"crops/000{i}_c{i + 1}s1_000001_00.jpg")
cfg = ModelConfig(backbone="resnet18", pretrained=False)
save_model("tiny.pt", build_model(cfg, 2), cfg, 2, [64, 32])
PY
"$RK" extract --weights tiny.pt --images crops --out f.npz --device cpu --batch-size 2
"$VPY" -c 'import numpy as np; f = np.load("f.npz"); print("features", f["features"].shape); assert f["features"].shape[0] == 2'

step "passed"
