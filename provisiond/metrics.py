"""Prometheus metrics, registered on the daemon's own registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.power_sync_seconds = Histogram(
            "provisiond_power_sync_seconds",
            "Wall time of one power sync over all BMCs",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.power_sync_machines = Gauge(
            "provisiond_power_sync_machines",
            "Machines read by the last power sync, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.bmc_errors = Counter(
            "provisiond_bmc_errors_total",
            "Failed BMC calls, by BMC endpoint and error code",
            ["bmc", "code"],
            registry=registry,
        )
        self.power_drift = Counter(
            "provisiond_power_drift_total",
            "Power states found changed outside provisiond",
            registry=registry,
        )
        # Rack power (provisiond.power_budget): per rack, not per machine (10,000 series
        # a scrape); the machines' readings go into one histogram instead.
        self.rack_measured_watts = Gauge(
            "provisiond_rack_measured_watts",
            "A rack's draw: its machines' last readings, declared watts where none",
            ["rack"],
            registry=registry,
        )
        self.rack_budget_watts = Gauge(
            "provisiond_rack_budget_watts",
            "A rack's power budget (racks with one)",
            ["rack"],
            registry=registry,
        )
        self.racks_over_budget = Gauge(
            "provisiond_racks_over_budget",
            "Racks whose draw is over 90% (over_90) or over 100% (over_100) of budget",
            ["level"],
            registry=registry,
        )
        self.machine_measured_watts = Histogram(
            "provisiond_machine_measured_watts",
            "Machines' power readings (BMC or PDU outlet), one per machine per power sync",
            buckets=(0, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000),
            registry=registry,
        )
        self.boot_phase_seconds = Histogram(
            "provisiond_boot_phase_seconds",
            "Seconds from a deploy's or inspection's power-cycle to each boot phase",
            ["kind", "phase"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600),
            registry=registry,
        )
        self.deploy_seconds = Histogram(
            "provisiond_deploy_seconds",
            "Seconds from deploy request to instance ready (or inspection to report)",
            ["kind", "outcome"],
            buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200),
            registry=registry,
        )
        self.db_connections_in_use = Gauge(
            "provisiond_db_connections_in_use",
            "Database connections checked out of each lane's pool (read when scraped)",
            ["lane"],
            registry=registry,
        )
        self.requests_in_flight = Gauge(
            "provisiond_requests_in_flight",
            "HTTP requests admitted and not yet answered, by lane and class",
            ["lane", "kind"],
            registry=registry,
        )
        self.requests_refused = Counter(
            "provisiond_requests_refused_total",
            "HTTP requests refused at admission (503 + Retry-After), by lane and class",
            ["lane", "kind"],
            registry=registry,
        )
        self.requests_dropped = Counter(
            "provisiond_requests_dropped_total",
            "Reads abandoned because their client disconnected before the answer",
            ["lane"],
            registry=registry,
        )
        self.event_loop_stalls = Counter(
            "provisiond_event_loop_stalls",
            "Times the daemon's event loop did not answer for 2 s (see event_loop_stalled)",
            registry=registry,
        )
        self.thread_pool_saturations = Counter(
            "provisiond_thread_pool_saturations",
            "Times calls waited 2 s for a thread of the default pool (thread_pool_saturated)",
            registry=registry,
        )
        self.enroll_refused = Counter(
            "provisiond_enroll_refused_total",
            "Unknown-MAC boot requests not enrolled, by network and reason "
            "(rate, pending, auto_enroll); see provisiond.deploy.enrollment",
            ["network", "reason"],
            registry=registry,
        )
        self.dnsmasq_up = Gauge(
            "provisiond_dnsmasq_up",
            "1 while the network's dnsmasq runs, 0 while it is down or restarting",
            ["network"],
            registry=registry,
        )
        # Cabling (provisiond.cabling): set from the stored verdicts after each check.
        self.cabling_ports = Gauge(
            "provisiond_cabling_ports",
            "NIC ports by their last cabling verdict (pass, fail, n/a)",
            ["result"],
            registry=registry,
        )
        self.cabling_failing_ports = Gauge(
            "provisiond_cabling_failing_ports",
            "NIC ports whose last cabling check failed (another switch or port than planned)",
            registry=registry,
        )
