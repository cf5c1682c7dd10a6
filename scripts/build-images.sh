#!/usr/bin/env bash
# Builds the images the Helm chart deploys — ghcr.io/lantern-dev/{worker,operator,router}:VERSION
# — into this machine's container storage, with no registry pull (README "Images"):
# - the base is made from Debian's packages by mmdebstrap: libc, libgcc, CA certificates and
#   tzdata, a non-root user 65532, and no shell or other program (localhost/lantern/base:bookworm,
#   made once);
# - buildah adds each binary cargo built on this machine, stripped, as the entrypoint, with OCI
#   labels (source, revision, version) and the digests of the binary and base it holds, so an
#   image whose binary and base did not change is not rebuilt;
# - the CUDA worker image is built only where the CUDA toolchain (nvcc) is, on the same base with
#   the CUDA runtime libraries copied in; elsewhere the script says why it skipped it.
#
#   scripts/build-images.sh                    release binaries (cargo builds them)
#   scripts/build-images.sh --binaries DIR     binaries already built in DIR (the tests pass
#                                              target/debug)
#   scripts/build-images.sh --rebuild-base     make the base again
#   scripts/build-images.sh --test-image       also localhost/lantern/test-busybox:bookworm,
#                                              Debian's static busybox running as root, which
#                                              the container tests use as a shell
# Prints each image's reference and size. Needs podman, buildah and mmdebstrap
# (scripts/install-containers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

binaries=""
rebuild_base=false
test_image=false
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=true; shift ;;
    --test-image) test_image=true; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in podman buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-containers.sh" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
source_url=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
base=localhost/lantern/base:bookworm
uid=65532
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Serialized: tests may call this from several processes at once.
mkdir -p .cache
exec 9>.cache/build-images.lock
flock 9

if $rebuild_base || ! podman image exists "$base"; then
  # The extract variant unpacks packages without running their scripts; the hooks do what the
  # scripts would have (the CA bundle, the users) and removes everything a binary does not need.
  mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1,ca-certificates,tzdata,base-files,netbase \
    --extract-hook='cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1"/etc/ssl/certs/ca-certificates.crt' \
    --extract-hook="printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:$uid:$uid:nonroot:/home/nonroot:/sbin/nologin\n' > \"\$1\"/etc/passwd" \
    --extract-hook="printf 'root:x:0:\nnonroot:x:$uid:\n' > \"\$1\"/etc/group" \
    --extract-hook="mkdir -p \"\$1\"/home/nonroot && chown $uid:$uid \"\$1\"/home/nonroot && chmod 1777 \"\$1\"/tmp" \
    --extract-hook='cd "$1" && rm -rf bin/* sbin/* usr/bin/* usr/sbin/* usr/share/man usr/share/info usr/share/locale \
      usr/share/lintian usr/share/perl5 usr/share/debconf usr/share/ca-certificates usr/lib/x86_64-linux-gnu/gconv \
      usr/lib/ssl etc/dpkg && find usr/share/doc -type f ! -name copyright -delete' \
    bookworm "$work/base.tar"
  # What mmdebstrap needed until its own cleanup.
  tar --delete -f "$work/base.tar" ./etc/apt ./var/lib/apt ./var/lib/dpkg ./var/cache/apt ./var/cache/debconf ./var/log
  podman import --quiet --change "USER=$uid:$uid" --change "WORKDIR=/home/nonroot" \
    "$work/base.tar" "$base" >/dev/null
  echo "$base $(podman image inspect --format '{{.Size}}' "$base" | numfmt --to=si)B"
fi

test_busybox=localhost/lantern/test-busybox:bookworm
if $test_image && { $rebuild_base || ! podman image exists "$test_busybox"; }; then
  mmdebstrap --quiet --variant=extract --include=busybox-static \
    --extract-hook='chroot "$1" /bin/busybox --install -s /bin' bookworm "$work/busybox.tar"
  tar --delete -f "$work/busybox.tar" ./etc/apt ./var/lib/apt ./var/lib/dpkg ./var/cache/apt ./var/log
  podman import --quiet "$work/busybox.tar" "$test_busybox" >/dev/null
  echo "$test_busybox $(podman image inspect --format '{{.Size}}' "$test_busybox" | numfmt --to=si)B"
fi

if [ -z "$binaries" ]; then
  cargo build --release --locked --bin lantern-worker --bin lantern-operator --bin lantern-router
  binaries=target/release
fi

# image NAME BINARY PORTS...: builds ghcr.io/lantern-dev/NAME:VERSION unless it holds BINARY already.
image() {
  local name="$1" binary="$2" tag="$3"; shift 3
  local reference="ghcr.io/lantern-dev/$name:$tag" program
  program=$(basename "$binary")
  local digest built
  digest=$(sha256sum "$binary" | cut -d' ' -f1)
  built="$digest on $(podman image inspect --format '{{.Id}}' "$base")"
  if [ "$(podman image inspect --format '{{index .Labels "dev.lantern.built-from"}}' "$reference" 2>/dev/null)" = "$built" ]; then
    echo "$reference $(podman image inspect --format '{{.Size}}' "$reference" | numfmt --to=si)B (unchanged)"
    return
  fi
  strip --strip-debug -o "$work/$program" "$binary"
  local container
  container=$(buildah from --quiet --pull-never "$base")
  buildah copy --quiet --chmod 0555 "$container" "$work/$program" "/usr/local/bin/$program" >/dev/null
  local ports=()
  for port in "$@"; do ports+=(--port "$port"); done
  buildah config --user "$uid:$uid" --entrypoint "[\"/usr/local/bin/$program\"]" --cmd '' "${ports[@]}" \
    --label org.opencontainers.image.title="$program" \
    --label org.opencontainers.image.source="$source_url" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label dev.lantern.binary-digest="$digest" --label dev.lantern.built-from="$built" "$container"
  buildah commit --quiet --rm "$container" "$reference" >/dev/null
  echo "$reference $(podman image inspect --format '{{.Size}}' "$reference" | numfmt --to=si)B"
}

image worker "$binaries/lantern-worker" "$version" 8500 8501 7070 7071
image operator "$binaries/lantern-operator" "$version" 8080
image router "$binaries/lantern-router" "$version" 8500 8502

if command -v nvcc >/dev/null; then
  cargo build --release --locked -p lantern-worker --features cuda --bin lantern-worker --target-dir target/cuda
  cuda_lib=$(dirname "$(command -v nvcc)")/../lib64
  mkdir -p "$work/cuda"
  cp -L "$cuda_lib"/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.* "$work/cuda/"
  image worker target/cuda/release/lantern-worker "$version-cuda" 8500 8501 7070 7071
  container=$(buildah from --quiet --pull-never "ghcr.io/lantern-dev/worker:$version-cuda")
  buildah copy --quiet "$container" "$work/cuda" /usr/local/cuda/lib64 >/dev/null
  buildah config --env LD_LIBRARY_PATH=/usr/local/cuda/lib64 "$container"
  buildah commit --quiet --rm "$container" "ghcr.io/lantern-dev/worker:$version-cuda" >/dev/null
else
  echo "ghcr.io/lantern-dev/worker:$version-cuda skipped: no CUDA toolchain (nvcc) on this machine"
fi
