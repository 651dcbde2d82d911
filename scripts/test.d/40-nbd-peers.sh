#!/usr/bin/env bash
# NBD against real peers: `oxio serve` driven by qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh,
# nbdfuse + a real ext4 filesystem, and a SIGTERM crash-consistency check. Needs root (loop
# devices, mounts) and the tools from scripts/setup.d/40-nbd.sh. Every server, mount, loop
# device and temporary file is cleaned up on every exit path.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH # nbdsh needs Debian's python3 with libnbd

cargo build --quiet -p oxio --bin oxio
OXIO=${CARGO_TARGET_DIR:-$PWD/target}/debug/oxio

work=$(mktemp -d /tmp/oxio-nbd-peers.XXXXXX)
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

failures=0
pass() { echo "  ok: $*"; }
fail() { echo "  FAIL: $*"; failures=$((failures + 1)); }
check() { # check NAME CMD...: runs CMD, records the verdict
    local name=$1; shift
    if "$@" >"$work/last.log" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    | /' "$work/last.log" | tail -20; fi
}

# start_server NAME ARGS...: oxio serve on $work/NAME.sock; sets $server_pid, $uri.
start_server() {
    local name=$1; shift
    local sock=$work/$name.sock
    "$OXIO" serve --unix "$sock" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$work/$name.err"; echo "server $name did not start"; exit 1; }
    uri="nbd+unix:///oxio?socket=$sock"
}
# stop_server PID: SIGTERM, then the server must drain and exit 0.
stop_server() {
    kill -TERM "$1"
    local rc=0
    wait "$1" || rc=$?
    [ "$rc" -eq 0 ] || { echo "server exited with $rc"; return 1; }
}

echo "== qemu-io / qemu-img"
start_server main -b memory:1G --export img=memory:256M --export scratch=memory:64M --tcp 127.0.0.1:0
main_pid=$server_pid main_uri=$uri
check "qemu-io write/read/zero/discard/flush patterns" qemu-io -f raw \
    -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \
    -c 'write -f -P 0x5a 1M 64k' -c 'read -P 0x5a 1M 64k' \
    -c 'write -z 2M 1M' -c 'read -P 0 2M 1M' \
    -c 'write -P 0xcd 4M 1M' -c 'discard 4M 1M' -c 'read -P 0 4M 1M' \
    -c 'aio_write -P 0x11 8M 256k' -c 'aio_write -P 0x22 9M 256k' -c 'aio_flush' \
    -c 'read -P 0x11 8M 256k' -c 'read -P 0x22 9M 256k' -c flush "$main_uri"
qemu_io_no_errors() { ! qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'read -P 0x5a 1M 64k' "$main_uri" | grep -i "fail\|error\|mismatch" >/dev/null; }
check "qemu-io data persists across connections" qemu_io_no_errors
qemu_info() { qemu-img info --output=json "$main_uri" | grep '"virtual-size": 1073741824' >/dev/null; }
check "qemu-img info reports 1 GiB" qemu_info
# (`grep >/dev/null`, not `grep -q`, after a pipe: `-q` stops reading at the first match, and
# under pipefail the writer can then die of SIGPIPE and fail the check.)
qemu_map() {
    # 0-1 MiB + 64 KiB written, 2-3 MiB zeroed and 4-5 MiB discarded (holes), 8 MiB data.
    local m; m=$(qemu-img map --output=json "$main_uri")
    echo "$m"
    echo "$m" | grep '"start": 0, "length": 1114112, .*"data": true' >/dev/null &&
        echo "$m" | grep '"start": 1114112, "length": 7274496, .*"zero": true, "data": false' >/dev/null &&
        echo "$m" | grep '"start": 8388608, "length": 262144, .*"data": true' >/dev/null
}
check "qemu-img map shows data and holes" qemu_map
head -c 256M /dev/urandom >"$work/local.img"
img_uri="nbd+unix:///img?socket=$work/main.sock"
check "qemu-img convert a 256 MiB image into the export" qemu-img convert -n -f raw -O raw "$work/local.img" "$img_uri"
check "qemu-img compare: identical" qemu-img compare -f raw -F raw "$work/local.img" "$img_uri"
compare_differs() {
    qemu-io -f raw -c 'write -P 0x77 100M 4k' "$img_uri" >/dev/null || return 1
    local rc=0
    qemu-img compare -f raw -F raw "$work/local.img" "$img_uri" || rc=$?
    [ "$rc" -eq 1 ]
}
check "qemu-img compare: a changed block is found" compare_differs

echo "== nbdinfo"
json() { nbdinfo --json "$main_uri" >"$work/info.json" && python3 - "$work/info.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["exports"][0]
assert d["protocol"] == "newstyle-fixed", d
assert e["export-size"] == 1 << 30, e
for k in ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_df", "can_multi_conn", "can_cache"]:
    assert e[k] is True, k
assert e["is_read_only"] is False
assert e["block_size_maximum"] == 32 << 20, e
assert "base:allocation" in e["contexts"], e
EOF
}
check "nbdinfo --json" json
list() { nbdinfo --list "nbd+unix://?socket=$work/main.sock" >"$work/list.txt" && for n in oxio img scratch; do grep -q "export=\"$n\"" "$work/list.txt" || return 1; done; }
check "nbdinfo --list shows all three exports" list
map() { nbdinfo --map "$main_uri" | tee "$work/map.txt" && grep -qE '^ +0 +1114112 +0 +data' "$work/map.txt" && grep -qE 'hole,zero' "$work/map.txt"; }
check "nbdinfo --map" map
for cap in cache df fast-zero flush fua multi-conn structured-reply trim zero; do
    check "nbdinfo --can $cap" nbdinfo --can "$cap" "$main_uri"
done
not_ro() { nbdinfo --is read-only "$main_uri"; [ $? -eq 2 ]; }
check "nbdinfo --is read-only is false" not_ro
systemd_activation() { nbdinfo --size -- [ "$OXIO" serve -b memory:3M ] | grep -x 3145728 >/dev/null; }
check "systemd socket activation (nbdinfo -- [ oxio serve ])" systemd_activation
sd_notify() {
    python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); s.settimeout(20)
print(s.recv(100).decode().strip(), s.recv(100).decode().strip())" "$work/notify" >"$work/notify.txt" &
    local listener=$!
    for _ in $(seq 50); do [ -S "$work/notify" ] && break; sleep 0.1; done
    NOTIFY_SOCKET=$work/notify "$OXIO" serve -b memory:1M --unix "$work/notify-server.sock" >/dev/null 2>&1 &
    local srv=$!
    for _ in $(seq 100); do [ -S "$work/notify-server.sock" ] && break; sleep 0.1; done
    kill -TERM "$srv" && wait "$srv" && wait "$listener" && grep -qx 'READY=1 STOPPING=1' "$work/notify.txt"
}
check "systemd notify: READY=1 when listening, STOPPING=1 on SIGTERM" sd_notify

tcp_uri=$(grep -o 'nbd://127.0.0.1:[0-9]*/oxio' "$work/main.out" | head -1)
tcp() { [ -n "$tcp_uri" ] && nbdinfo --size "$tcp_uri" | grep -x 1073741824 >/dev/null &&
    qemu-io -f raw -c 'read -P 0xab 0 1M' "$tcp_uri" | grep 'read 1048576/1048576' >/dev/null; }
check "TCP listener ($tcp_uri)" tcp

echo "== read-only export"
start_server ro --read-only -b memory:16M
ro_pid=$server_pid ro_uri=$uri
check "nbdinfo --is read-only" nbdinfo --is read-only "$ro_uri"
ro_write() { ! qemu-io -f raw -c 'write -P 1 0 4k' "$ro_uri" 2>&1 | grep '^wrote' >/dev/null; }
check "writes to a read-only export fail" ro_write
check "read-only server stops cleanly" stop_server "$ro_pid"

echo "== nbdcopy"
head -c 256M /dev/urandom >"$work/random.img"
copy_round_trip() {
    nbdcopy "$work/random.img" "$img_uri" &&
        nbdcopy "$img_uri" "$work/back.img" &&
        cmp "$work/random.img" "$work/back.img"
}
check "nbdcopy 256 MiB random image in and out, byte-compared" copy_round_trip
increment() {
    "$OXIO" make-increment-file --quiet "$work/pattern" 64M &&
        nbdcopy "$work/pattern" "nbd+unix:///scratch?socket=$work/main.sock" &&
        nbdcopy "nbd+unix:///scratch?socket=$work/main.sock" "$work/pattern.back" &&
        "$OXIO" make-increment-file --quiet --verify "$work/pattern.back" &&
        qemu-io -f raw -c 'write -P 0 1M 4' "nbd+unix:///scratch?socket=$work/main.sock" >/dev/null &&
        nbdcopy "nbd+unix:///scratch?socket=$work/main.sock" "$work/pattern.back" &&
        ! "$OXIO" make-increment-file --quiet --verify "$work/pattern.back"
}
check "make-increment-file pattern survives a round trip; --verify catches a change" increment
rm -f "$work/pattern" "$work/pattern.back"
rm -f "$work/back.img" "$work/local.img"

echo "== nbdsh bad requests (strict mode off)"
start_server aligned --min-block-size 512 -b memory:16M
aligned_pid=$server_pid aligned_uri=$uri
cat >"$work/bad.py" <<'EOF'
import errno, socket, struct, sys
import nbd

uri, sock = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(uri)
size = h.get_size()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
failures = 0

def expect(name, fn, want):
    global failures
    try:
        fn()
        got = 0
    except nbd.Error as e:
        got = e.errnum
    ok = got == want
    failures += not ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: errno {got}, want {want}")
    h.pwrite(b"\x5a" * 512, 0)  # the connection is still usable
    assert h.pread(512, 0) == b"\x5a" * 512

expect("read beyond the end", lambda: h.pread(1024, size - 512), errno.EINVAL)
expect("read past 2^64", lambda: h.pread(512, (1 << 64) - 512), errno.EINVAL)
expect("write beyond the end", lambda: h.pwrite(b"x" * 1024, size - 512), errno.ENOSPC)
expect("trim beyond the end", lambda: h.trim(1024, size - 512), errno.EINVAL)
expect("zero beyond the end", lambda: h.zero(1024, size - 512), errno.ENOSPC)
expect("block status beyond the end", lambda: h.block_status(1024, size - 512, lambda *a: 0), errno.EINVAL)
expect("misaligned read", lambda: h.pread(512, 1), errno.EINVAL)
expect("misaligned write", lambda: h.pwrite(b"y" * 100, 512), errno.EINVAL)
expect("zero-length read", lambda: h.pread(0, 0), errno.EINVAL)
expect("zero-length write", lambda: h.pwrite(b"", 0), errno.EINVAL)
expect("zero-length trim", lambda: h.trim(0, 0), errno.EINVAL)
expect("unknown read flag", lambda: h.pread(512, 0, flags=1 << 9), errno.EINVAL)
expect("NO_HOLE on a read", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_NO_HOLE), errno.EINVAL)
expect("oversize read (48 MiB > 32 MiB max)", lambda: h.pread(48 << 20, 0), errno.EOVERFLOW)
expect("oversize write (payload skipped)", lambda: h.pwrite(b"\0" * (48 << 20), 0), errno.EINVAL)
expect("fast zero", lambda: h.zero(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO), 0)
expect("cache", lambda: h.cache(4096, 0), 0)

# Unknown commands and options: libnbd cannot send them, so speak the protocol directly.
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        assert c, "server closed the connection"
        b += c
    return b
assert recv(18)[:16] == b"NBDMAGICIHAVEOPT"
s.sendall(struct.pack(">I", 3))
def option(o, data):
    s.sendall(b"IHAVEOPT" + struct.pack(">II", o, len(data)) + data)
    replies = []
    while True:
        magic, opt, kind, ln = struct.unpack(">QIII", recv(20))
        replies.append((kind, recv(ln)))
        if kind == 1 or kind & 0x80000000:
            return replies
r = option(99, b"junk")
ok = r[-1][0] == 0x80000001
failures += not ok
print(f"{'ok' if ok else 'FAIL'}: unknown option gets ERR_UNSUP")
r = option(7, struct.pack(">I", 4) + b"oxio" + struct.pack(">H", 0))
assert r[-1][0] == 1, r
for cmd, want in [(42, errno.EINVAL), (0, 0)]:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, 77, 0, 512))
    magic, err, cookie = struct.unpack(">IIQ", recv(16))
    if err == 0:
        recv(512)
    ok = (magic, err, cookie) == (0x67446698, want, 77)
    failures += not ok
    print(f"{'ok' if ok else 'FAIL'}: raw command {cmd}: errno {err}, want {want}")
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 78, 0, 0))  # DISC
assert s.recv(1) == b"", "the server closes after DISC"
h.shutdown()
sys.exit(1 if failures else 0)
EOF
check "nbdsh: every bad request gets its errno and the connection stays usable" \
    nbdsh -n -c "import sys; sys.argv = ['bad', '$aligned_uri', '$work/aligned.sock']" -c "exec(open('$work/bad.py').read())"
[ -s "$work/last.log" ] && sed 's/^/    /' "$work/last.log" | grep -E '^ +(ok|FAIL):' | head -30
check "server with min block size stops cleanly on SIGTERM" stop_server "$aligned_pid"

echo "== nbdfuse -> losetup -> ext4"
# In a private mount namespace, so no other test's namespace can keep a copy of our mounts.
cat >"$work/fs.sh" <<'EOF'
set -euo pipefail
work=$1
mnt=$work/mnt fusedir=$work/fuse loopdev="" fuse_pid=""
cleanup() {
    set +e
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loopdev" ] && losetup -d "$loopdev"
    fusermount3 -u -z "$fusedir" 2>/dev/null
    [ -n "$fuse_pid" ] && wait "$fuse_pid"
}
trap cleanup EXIT
mkdir -p "$mnt" "$fusedir"
nbdfuse -P "$work/nbdfuse.pid" "$fusedir/disk" --unix "$work/main.sock" &
fuse_pid=$!
for _ in $(seq 100); do [ -s "$work/nbdfuse.pid" ] && break; sleep 0.1; done
loopdev=$(losetup -f --show "$fusedir/disk")
mkfs.ext4 -q -F "$loopdev"
mount "$loopdev" "$mnt"
for i in $(seq 8); do dd if=/dev/urandom of="$mnt/f$i" bs=1M count=4 status=none; done
(cd "$mnt" && sha256sum f*) >"$work/sums"
umount "$mnt"
e2fsck -fn "$loopdev"
mount -o ro "$loopdev" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$work/sums")
umount "$mnt"
losetup -d "$loopdev"
loopdev=""
fusermount3 -u "$fusedir"
wait "$fuse_pid"
fuse_pid=""
echo "ext4 on nbdfuse: clean"
EOF
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
    check "mkfs.ext4, mount, write 32 MiB, umount, e2fsck -fn clean, files verify" \
        unshare --mount --propagation private bash "$work/fs.sh" "$work"
else
    fail "nbdfuse filesystem test needs root and /dev/fuse"
fi
check "main server drains and exits 0 on SIGTERM" stop_server "$main_pid"

echo "== the default backend: OmniXtend memory node in-process (no flags)"
start_server default --export small=omnixtend:64M
default_pid=$server_pid default_uri=$uri
check "default export is the in-process OmniXtend node" grep -q 'OmniXtend memory node in-process' "$work/default.out"
check "qemu-io patterns over TLoE" qemu-io -f raw -c 'write -P 0x3c 0 1M' -c 'read -P 0x3c 0 1M' \
    -c 'write -f -P 0x3d 5M 64k' -c 'write -z 1M 1M' -c 'read -P 0 1M 1M' -c flush -c 'read -P 0x3d 5M 64k' "$default_uri"
for cap in flush fua multi-conn zero; do
    check "nbdinfo --can $cap (OmniXtend)" nbdinfo --can "$cap" "$default_uri"
done
omx_copy() {
    local small="nbd+unix:///small?socket=$work/default.sock"
    head -c 64M /dev/urandom >"$work/omx.img" && nbdcopy "$work/omx.img" "$small" &&
        nbdcopy "$small" "$work/omx.back" && cmp "$work/omx.img" "$work/omx.back"
}
check "nbdcopy 64 MiB round trip through the OmniXtend stack" omx_copy
check "default server drains and exits 0 on SIGTERM" stop_server "$default_pid"
rm -f "$work/omx.img" "$work/omx.back"

echo "== crash consistency: SIGTERM while a client writes"
truncate -s 64M "$work/disk.img"
start_server crash -b "file:$work/disk.img"
crash_pid=$server_pid crash_uri=$uri
cat >"$work/writer.py" <<'EOF'
# Writes 4 KiB blocks over and over (64 in flight, then FLUSH), logging after every FLUSH
# reply which write is durable, until the server goes away.
import os, sys
import nbd
uri, log = sys.argv[1], sys.argv[2]
BLOCKS = 16384
h = nbd.NBD()
h.connect_uri(uri)
n = 0  # sequence number of the next write; block = n % BLOCKS
try:
    while True:
        cookies = [h.aio_pwrite(b"%016d" % k * 256, (k % BLOCKS) * 4096) for k in range(n, n + 64)]
        while cookies:
            h.poll(-1)
            cookies = [c for c in cookies if not h.aio_command_completed(c)]
        h.flush()
        n += 64
        with open(log + ".tmp", "w") as f:
            f.write(str(n - 1))
            f.flush()
            os.fsync(f.fileno())
        os.rename(log + ".tmp", log)
except nbd.Error as e:
    print("writer stopped:", e)
print("durable through write", n - 1)
EOF
nbdsh -n -c "import sys; sys.argv = ['w', '$crash_uri', '$work/durable']" -c "exec(open('$work/writer.py').read())" >"$work/writer.log" 2>&1 &
writer=$!
pids+=("$writer")
sleep 1.5
check "server drains and exits 0 on SIGTERM mid-write" stop_server "$crash_pid"
wait "$writer" || true
cat "$work/writer.log" | sed 's/^/    /'
verify_durable() {
    local n; n=$(cat "$work/durable" 2>/dev/null || echo -1)
    [ "$n" -ge 63 ] || { echo "the writer made no durable progress ($n)"; return 1; }
    start_server crash2 -b "file:$work/disk.img"
    local pid=$server_pid
    # Every block's durable value is the last write to it at or before write n; a block may
    # also hold a newer, unflushed write, but never an older one.
    nbdsh -n -c "import sys; sys.argv = ['v', '$uri', '$n']" -c "
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); n = int(sys.argv[2]); B = 16384
for b in range(min(B, n + 1)):
    last = n - ((n - b) % B)
    got = int(h.pread(16, b * 4096))
    assert got >= last and got % B == b, f'block {b}: has write {got}, durable write {last} lost'
print(f'{n + 1} writes, every one acknowledged before a flush is on disk')
" && stop_server "$pid"
}
check "every write acknowledged before a FLUSH reply reads back after restart" verify_durable

echo
if [ "$failures" -eq 0 ]; then
    echo "40-nbd-peers: all passed"
else
    echo "40-nbd-peers: $failures failed"
    exit 1
fi
