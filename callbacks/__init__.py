"""Lightning glue (thin): see halo/ for the method itself."""
