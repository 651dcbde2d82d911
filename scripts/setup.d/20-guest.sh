#!/usr/bin/env bash
# QEMU TCG guests for device and NBD tests (crates/guest-harness), per
# /work/shared/docs/testing.md:
#   - host tools: busybox-static, cpio, kmod, e2fsprogs, nbd-client (copied into initramfs);
#   - qemu-system-x86 from bookworm-backports through a PRIVATE apt source list (plain
#     bookworm's QEMU 7.2 would remove the preinstalled qemu-utils 10.0.2);
#   - the Debian cloud kernel that linux-image-cloud-amd64 depends on, unpacked with dpkg -x
#     into .cache/guest/kernel (never installed into /boot), with depmod run on it.
# Idempotent: every step checks before it acts. Result: .cache/guest/kernel.env names the
# kernel image and module tree the harness boots.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

cache=${OXIO_GUEST_CACHE:-$PWD/.cache/guest}
mkdir -p "$cache"

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

# 1. Host tools from plain bookworm (none of these touch qemu-utils).
want=(busybox-static cpio kmod e2fsprogs nbd-client)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. QEMU from bookworm-backports via a private source list (the system's lists stay as they
#    are). The private list keeps the machine's own entries, so dependencies still resolve
#    from bookworm, and adds the same mirrors with the suite bookworm-backports.
if ! command -v qemu-system-x86_64 >/dev/null; then
    apt_dir=$cache/apt
    mkdir -p "$apt_dir/lists/partial"
    src=/etc/apt/sources.list.d/debian.sources
    {
        cat "$src"
        echo
        # The first stanza (the main archive) again, with only the backports suite.
        awk 'BEGIN{RS=""; ORS="\n\n"} NR==1' "$src" |
            sed -E 's/^Suites:.*/Suites: bookworm-backports/'
    } >"$apt_dir/backports.sources"
    opts=(-o "Dir::Etc::sourcelist=$apt_dir/backports.sources" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::lists=$apt_dir/lists")
    apt-get "${opts[@]}" update -qq
    apt-get "${opts[@]}" install -y -qq --no-install-recommends -t bookworm-backports \
        qemu-system-x86 qemu-system-common qemu-system-data qemu-utils
    # Guard against the trap this step exists to avoid.
    qemu-img --version | grep -q "version 10\." || {
        echo "20-guest: qemu-utils is no longer 10.x after installing QEMU" >&2
        exit 1
    }
fi

# 3. The guest kernel: the package linux-image-cloud-amd64 depends on, unpacked, depmod'ed.
if [ ! -s "$cache/kernel.env" ] || ! (. "$cache/kernel.env" && [ -f "$KERNEL_IMAGE" ] &&
    [ -f "$MODULES_DIR/lib/modules/$KERNEL_VERSION/modules.dep" ]); then
    resolve_kernel() {
        apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
    }
    work=$(mktemp -d "$cache/kernel.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    pkg=$(resolve_kernel)
    # Stale or missing package lists: refresh once and resolve again.
    if [ -z "$pkg" ] ||
        ! (cd "$work" && apt-get -o APT::Sandbox::User=root download -qq "$pkg"); then
        apt_update_once
        pkg=$(resolve_kernel)
        [ -n "$pkg" ] || { echo "20-guest: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
        (cd "$work" && apt-get -o APT::Sandbox::User=root download -qq "$pkg")
    fi
    version=${pkg#linux-image-}
    dpkg -x "$work"/"$pkg"_*.deb "$work/tree"
    depmod -b "$work/tree" "$version"
    rm -rf "$cache/kernel"
    mv "$work/tree" "$cache/kernel"
    cat >"$cache/kernel.env" <<EOF
KERNEL_VERSION=$version
KERNEL_IMAGE=$cache/kernel/boot/vmlinuz-$version
MODULES_DIR=$cache/kernel
EOF
    echo "20-guest: guest kernel $version in $cache/kernel"
fi
