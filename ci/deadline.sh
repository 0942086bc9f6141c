# Sourced by the GPU check scripts (ci/gpu_check*.sh) once they have set DEADLINE (epoch
# seconds after which no stage starts) and S (their summary file).
left() { echo $((DEADLINE - $(date +%s))); }
cap() { # the smaller of $1 and the time left (at least 5 s)
    local l
    l=$(left)
    if ((l < $1)); then echo $((l > 5 ? l : 5)); else echo "$1"; fi
}
stage() { echo "== $* ($(date +%T), $(left) s left)" | tee -a "$S"; }
