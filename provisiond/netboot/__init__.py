"""Network-boot adapters: dnsmasq (its config, host files and log parser), the image
file store, zero-copy file serving and sockets in network namespaces. They know no
use case: the deploy package drives them and they report back through callables."""
