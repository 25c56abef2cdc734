"""Several daemons on one PostgreSQL database; one daemon on SQLite.

Roles, and how each kind of work is shared (README "Running several daemons"):

- **Membership** (:mod:`.members`): each daemon has a ``daemon`` row and heartbeats
  it at database time. A daemon whose heartbeat is older than
  ``daemon_dead_after_s`` is declared dead by any live daemon, which drops the dead
  one's machine locks at once, so the deploy engines of the others take its machines.
- **Claims** (the deploy engine): each step takes the machine's lock row; any live
  daemon may take any machine, and a takeover is just a dropped lock.
- **A hash ring** (power sync): each machine is read by the live daemon that
  rendezvous hashing (:mod:`.ring`) names, so the fleet is split without a table of
  assignments and a member change moves only that member's share.
- **Leaderships** (:mod:`.leadership`): the reaper and the allocation queue (matching,
  deploy follow-up, lease expiry) run on the one daemon holding their row; each of
  their writes checks the row's epoch in its own transaction (the fence).
- **DHCP**: one holder per provisioning network, a leadership named ``dhcp:<network>``.

:class:`.node.ClusterNode` runs all of this for one daemon. On SQLite it is a single
daemon (``serve`` takes a file lock beside the database), and none of it runs but the
daemon's own row.
"""
