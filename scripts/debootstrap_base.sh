#!/usr/bin/env bash
# A Python 3.11 base image for machines without a container registry: debootstrap a minimal Debian bookworm (its
# python3 is 3.11), add venv support and CA certificates, and import it into Docker. The Dockerfile stays what
# users build; pass the result as --build-arg PYTHON_IMAGE=<tag>.
#
#   scripts/debootstrap_base.sh [TAG]        (default lulc-base/python:3.11-bookworm; needs root and Docker)
#   DEBIAN_MIRROR=http://deb.debian.org/debian
#   HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt   the image trusts what this machine trusts (a TLS-inspecting
#                  proxy's CA included, which pip inside the build then accepts: PIP_CERT); HOST_CA_BUNDLE= to skip
set -euo pipefail

tag="${1:-lulc-base/python:3.11-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root="$(mktemp -d /var/tmp/lulc-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT

echo "debootstrap_base: bookworm from $mirror into $root" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ca="${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
env=()
if [[ -n "$ca" && -f "$ca" ]]; then
  cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
  env=(--change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*

tar -C "$root" --numeric-owner -c . \
  | docker import --change 'ENV LANG=C.UTF-8' "${env[@]}" --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "debootstrap_base: $tag ($(docker image ls --format '{{.Size}}' "$tag"))" >&2
