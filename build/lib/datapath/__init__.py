"""The relay's data plane as seen from userspace.

- datapath.bpfsys: the bpf() syscall (map elements and batches, pinned objects, XDP_PASS,
  BPF_PROG_TEST_RUN), per architecture;
- datapath.xdp: attaching programs to interfaces (rtnetlink);
- datapath.maps: the ctypes mirrors of bpf/structs.h and the pinned maps;
- datapath.slowpath: the userspace forwarder for flows the XDP program does not know (DTLS/SRTP
  after a failover), installing them in the kernel's flow map.

The XDP program itself is bpf/; control/ (relayctl) loads it and keeps its maps in step.
"""


class DatapathError(Exception):
    """An expected failure of the data plane (nothing pinned, wrong layout, an attach the kernel
    refused): str() is a message for the operator, never a traceback."""
