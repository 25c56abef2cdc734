"""Network boot: the image file store, iPXE scripts and cloud-init seeds, file serving."""
