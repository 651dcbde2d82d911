# Sourced by the benchmark scripts: how much CPU time the hypervisor took from this machine
# while a benchmark ran. Steal of more than a few per cent makes rounds swing far more than
# any difference between the programs compared, so a run reports it next to its figures.
#
#   steal_start            # at the start of the run
#   steal_report           # at the end: prints one line for the results

steal_counters() {
    # The "cpu" line of /proc/stat: user nice system idle iowait irq softirq steal.
    awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat
}

steal_start() {
    STEAL_AT_START=$(steal_counters)
}

steal_report() {
    local now
    now=$(steal_counters)
    awk -v a="$STEAL_AT_START" -v b="$now" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        total = y[1] - x[1]; steal = y[2] - x[2]
        share = (total > 0) ? 100 * steal / total : 0
        printf "CPU time stolen by the hypervisor during this run: %.1f %% (of %d jiffies)\n", share, total
    }'
}
