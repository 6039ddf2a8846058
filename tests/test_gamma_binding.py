"""Binding datasets to models is host work: it moves arrays to the device but compiles
nothing (every compiled program costs a shell re-run ~14 ms even from the cache)."""

import jax
from conftest import shared_data, traced_programs

import fitax.gamma as fg
from fitax.gamma.datasets import bind


def test_binding_traces_no_program():
    datasets = fg.read_datasets(shared_data("gamma", "sim", "datasets_n1.yaml"))
    models = fg.read_models(shared_data("gamma", "sim", "models_start_n1.yaml"))
    jax.clear_caches()  # as in a new process: nothing traced before
    with traced_programs() as traced:
        groups = bind(datasets, models)
    jax.block_until_ready(groups)
    assert traced == [], f"{len(traced)} programs traced while binding"


def test_large_stacks_are_padded_on_the_device_with_the_same_arrays(monkeypatch):
    """Above a size the exposures move unpadded and are padded by a compiled program
    (writing and copying a padded 1.5 GB stack on the host took ~9 s for 400 datasets):
    the bound arrays and the statistic are those of the host path, bit for bit."""
    import numpy as np

    from fitax.gamma import map_binding
    from fitax.gamma.likelihood import stat_sum_groups

    datasets = fg.read_datasets(shared_data("gamma", "sim", "datasets_n10.yaml"))
    models = fg.read_models(shared_data("gamma", "sim", "models_start_n10.yaml"))
    on_host = bind(datasets, models)
    map_binding._stacked_data.cache_clear()
    monkeypatch.setattr(map_binding, "_HOST_PADDING_BYTES", 0)
    with traced_programs() as traced:
        on_device = bind(datasets, models)
    assert len(traced) >= 1, "the large-stack path was not taken"
    for host, device in zip(on_host, on_device):
        np.testing.assert_array_equal(np.asarray(device.padded_exposure), np.asarray(host.padded_exposure))
    assert float(stat_sum_groups(models, on_device)) == float(stat_sum_groups(models, on_host))


def test_sky_to_pixel_agrees_with_astropy():
    """The binding's fast path (no high-level astropy objects) gives astropy's pixels, for
    positions in the map's frame and in another one, one position or many."""
    import numpy as np
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    from fitax.gamma.geometry import sky_to_pixel

    for ctype, crval in ((["GLON-TAN", "GLAT-TAN"], [359.4, -0.8]), (["RA---CAR", "DEC--CAR"], [83.6, 22.0]),
                         (["DEC--TAN", "RA---TAN"], [22.0, 83.6])):  # latitude first: the WCS's axis order
        wcs = WCS(naxis=2)
        wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.cdelt, wcs.wcs.crpix = ctype, crval, [-0.02, 0.02], [50.5, 40.5]
        for frame in ("galactic", "icrs", "fk5"):
            centre = wcs.pixel_to_world(47.3, 31.9).transform_to(frame)
            for positions in (centre, SkyCoord(centre.spherical.lon + np.linspace(-1, 1, 5) * centre.spherical.lon.unit,
                                                centre.spherical.lat + np.linspace(0.5, -0.5, 5) * centre.spherical.lat.unit,
                                                frame=frame)):
                expected = wcs.world_to_pixel(positions)
                np.testing.assert_allclose(sky_to_pixel(wcs, positions), expected, rtol=0, atol=1e-9)
