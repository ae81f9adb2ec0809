"""The guest: a VM's vCPUs (`vcpus`), the workloads they run (`workloads`),
what its pages hold (`content`), and the hypervisor's dirty log (`dirty_log`)
through which a migration learns what the guest wrote.
"""
