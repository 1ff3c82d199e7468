"""medseg's napari plugin (npe2). Readers, writers and widgets call `medseg` library functions;
nothing here re-implements I/O, inference or metrics. Filled in by the napari issue."""
