#!/bin/sh
# Without --privileged, /sys and the cgroup hierarchies are mounted read-only; dockerd needs to
# write both (cgroups for every container it runs). A restarted node finds pid files of the
# dockerd and containerd it had before and would refuse to start. An empty data root is seeded
# from a prepared image store mounted at /seed, so the node starts with its images.
set -e
mount -o remount,rw /sys 2>/dev/null || true
for dir in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -d "$dir" ] && mount -o remount,bind,rw "$dir" 2>/dev/null || true
done
find /run /var/run -maxdepth 3 -name 'docker*.pid' -delete 2>/dev/null || true
find /run /var/run -maxdepth 4 -name 'containerd.pid' -delete 2>/dev/null || true
if [ -d /seed/image ] && [ ! -e /var/lib/docker/image ]; then
    cp -a /seed/. /var/lib/docker/
fi
exec dockerd "$@"
