#!/usr/bin/env bash
# NBD real-peer tools (scripts/test.d/40-nbd-peers.sh, benches/nbd-fio.sh), all from Debian
# bookworm: nbdkit (the memory-plugin peer), libnbd-bin (nbdinfo, nbdcopy, nbdfuse),
# python3-libnbd (nbdsh), fio (ioengine=nbd), fuse3 (fusermount3 for nbdfuse), e2fsprogs
# (mkfs.ext4, e2fsck), util-linux (losetup), nbd-client (unused on the host; the guest suite
# copies it). qemu-utils 10.0.2 is preinstalled from bookworm-backports and must stay: nothing
# here depends on plain bookworm's QEMU. Idempotent: installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
want=(nbdkit libnbd-bin python3-libnbd fio fuse3 e2fsprogs util-linux)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
qemu-img --version | head -1
