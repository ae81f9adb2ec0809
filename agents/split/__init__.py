"""S-memV split migration's pure core (Suetake, Kashiwagi, Kizu and Kourai,
"S-memV: Split Migration of Large-Memory Virtual Machines in IaaS Clouds",
IEEE CLOUD 2018; the seed is ../shared/seeds/s-memv-split-migration.md).

- history.py: the 8-bit aging access history per page and its chunk history
  (§IV-B, Figs. 4 and 5).
- splitting.py: which chunks go to the main host: histogram-based LRU split
  without sorting (§IV-C) and the random policy (§V-D).
- paging.py: the network page table (main host), the memory server's page
  sub-table (sub-hosts) and the remote-paging decisions (§IV-D, IV-E).

Plain numpy over whole arrays; no Ray, no I/O: actors call these.
"""
