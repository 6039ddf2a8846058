"""The GADF data store (fitax.gamma.dl3) against Gammapy 2.1's DataStore on the H.E.S.S. DL3 DR1.

Tolerance: selections identical; events, GTIs and every IRF's bin edges and values equal to
Gammapy's (the same float32 numbers read from the same files: exact after unit conversion,
compared at 1e-12 relative).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from conftest import shared_data
from fitax.gamma.dl3 import DataStore, DL3Error, read_irfs

CRAB = (83.633, 22.014)
RUNS = (23523, 20136)  # a Crab run and an MSH 15-52 run


@pytest.fixture(scope="module")
def hess():
    return shared_data("gamma", "hess-dl3-dr1")


@pytest.fixture(scope="module")
def gammapy_store(hess):
    data = pytest.importorskip("gammapy.data", reason="Gammapy (test extra) not installed")
    return data.DataStore.from_dir(hess)


def test_selections_equal_gammapy(hess, gammapy_store):
    store = DataStore.from_dir(hess)
    assert len(store.obs_ids) == 105 and repr(store).endswith("105 observations)")
    table = gammapy_store.obs_table
    for radius in (1.0, 3.0):
        expected = table.select_sky_circle(SkyCoord(*CRAB, unit="deg"), radius * u.deg)["OBS_ID"]
        assert store.select(cone=(*CRAB, radius)) == [int(i) for i in expected]
    assert len(store.select(cone=(*CRAB, 3.0))) == 4  # the DR1's four Crab runs
    interval = Time(["2004-12-01", "2005-01-01"], scale="tt")
    expected = table.select_time_range(interval)["OBS_ID"]
    assert store.select(time=interval) == [int(i) for i in expected] and len(expected) > 0
    assert store.select(obs_ids=[20136, 23523], cone=(*CRAB, 3.0)) == [23523]


@pytest.mark.parametrize("obs_id", RUNS)
def test_observation_equals_gammapy(hess, gammapy_store, obs_id):
    ours = DataStore.from_dir(hess).observation(obs_id)
    theirs = gammapy_store.obs(obs_id)
    assert f"Observation({obs_id}:" in repr(ours)
    events = theirs.events.table
    assert len(ours.events) == len(events)
    np.testing.assert_array_equal(ours.events["ENERGY"].quantity.to_value("TeV"), events["ENERGY"].quantity.to_value("TeV"))
    np.testing.assert_array_equal(ours.events["EVENT_ID"], events["EVENT_ID"])
    assert ours.livetime.to_value("s") == pytest.approx(theirs.observation_live_time_duration.to_value("s"), rel=1e-12)
    assert ours.pointing.separation(theirs.get_pointing_icrs(theirs.tmid)).arcsec < 1e-6
    assert abs((ours.time_start - theirs.tstart).to_value("s")) < 1e-3 and abs((ours.time_stop - theirs.tstop).to_value("s")) < 1e-3
    for name in ("aeff", "edisp", "psf", "bkg"):
        irf, reference = getattr(ours, name), getattr(theirs, name)
        assert list(irf.axes) == reference.axes.names, name
        for axis in reference.axes:
            ours_axis = irf.axes[axis.name]
            assert ours_axis.interp == axis.interp and (ours_axis.edges is None) == (axis.node_type == "center")
            np.testing.assert_allclose(ours_axis.nodes.to_value(axis.unit), axis.center.value, rtol=1e-12, err_msg=f"{name} {axis.name}")
            if ours_axis.edges is not None:
                np.testing.assert_allclose(ours_axis.edges.to_value(axis.unit), axis.edges.value, rtol=1e-12, err_msg=f"{name} {axis.name}")
        assert irf.data.shape == reference.data.shape, name
        # Gammapy keeps the background array as stored, (ENERG, DETY, DETX), under axis names
        # (energy, fov_lon, fov_lat); fitax's data[e, i, j] is at fov_lon i, fov_lat j, as the
        # GADF columns say (DETX, DETY, ENERG in FITS order): the FoV axes swapped.
        expected = reference.data.transpose(0, 2, 1) if name == "bkg" else reference.data
        np.testing.assert_allclose(irf.data.to_value(reference.unit), expected, rtol=1e-12, err_msg=name)
    assert not np.allclose(ours.bkg.data.value, ours.bkg.data.value.transpose(0, 2, 1))  # the swap matters


def _copy_store(hess, tmp_path, obs_id=20136):
    """A data store of one run, in ``tmp_path``, whose index tables the test may change."""
    store = tmp_path / "store"
    (store / "data").mkdir(parents=True)
    name = f"hess_dl3_dr1_obs_id_{obs_id:06d}.fits.gz"
    shutil.copy(hess / "data" / name, store / "data" / name)
    for index in ("hdu-index", "obs-index"):
        table = Table.read(hess / f"{index}.fits.gz")
        table[table["OBS_ID"] == obs_id].write(store / f"{index}.fits.gz")
    return store


def test_bad_stores_are_clear_errors(hess, tmp_path):
    with pytest.raises(DL3Error, match="no such data store folder"):
        DataStore.from_dir(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DL3Error, match="no hdu-index table"):
        DataStore.from_dir(empty)
    store_path = _copy_store(hess, tmp_path)
    store = DataStore.from_dir(store_path)
    assert store.observation(20136).aeff.data.unit == u.m**2
    with pytest.raises(DL3Error, match="obs 23523 is not in the hdu-index table"):
        store.observation(23523)
    with pytest.raises(DL3Error, match="obs 1, 2 not in the obs-index table"):
        store.select(obs_ids=[1, 2, 20136])

    hdu_index = Table.read(store_path / "hdu-index.fits.gz")
    hdu_index["HDU_NAME"][hdu_index["HDU_TYPE"] == "aeff"] = "AEFF_X"
    hdu_index.write(store_path / "hdu-index.fits.gz", overwrite=True)
    with pytest.raises(DL3Error, match=r"obs 20136: aeff HDU 'AEFF_X' of .*: the file has no such HDU \(it has EVENTS, GTI, AEFF"):
        DataStore.from_dir(store_path).observation(20136)

    hdu_index = hdu_index[hdu_index["HDU_TYPE"] != "gti"]
    hdu_index.write(store_path / "hdu-index.fits.gz", overwrite=True)
    with pytest.raises(DL3Error, match="obs 20136 has no gti HDU"):
        DataStore.from_dir(store_path).observation(20136)


def test_missing_file_and_empty_gti_are_clear_errors(hess, tmp_path):
    store_path = _copy_store(hess, tmp_path)
    run = store_path / "data" / "hess_dl3_dr1_obs_id_020136.fits.gz"
    with fits.open(run) as hdul:
        hdul["GTI"] = fits.BinTableHDU(hdul["GTI"].data[:0], hdul["GTI"].header, name="GTI")
        hdul.writeto(run, overwrite=True)
    with pytest.raises(DL3Error, match="obs 20136: its GTI table has no intervals"):
        DataStore.from_dir(store_path).observation(20136)
    run.unlink()
    with pytest.raises(DL3Error, match=r"obs 20136: events HDU 'events' of .*obs_id_020136.fits.gz: no such file"):
        DataStore.from_dir(store_path).observation(20136)


def test_cta_irf_file_equals_gammapy():
    """A CTA caldb file (3-Gauss PSF, background columns in ENERG, DETX, DETY order)."""
    path = shared_data("gamma", "cta-caldb", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    irf_module = pytest.importorskip("gammapy.irf", reason="Gammapy (test extra) not installed")
    theirs = irf_module.load_irf_dict_from_file(path)
    ours = read_irfs(path)
    assert set(ours) == set(theirs) == {"aeff", "edisp", "psf", "bkg"}
    assert ours["psf"].hdu_class == "psf_3gauss" and "psf_3gauss" in repr(ours["psf"])
    for name, reference in theirs.items():
        irf = ours[name]
        assert list(irf.axes) == reference.axes.names, name
        for axis in reference.axes:
            np.testing.assert_allclose(irf.axes[axis.name].nodes.to_value(axis.unit), axis.center.value, rtol=1e-12)
        if name == "psf":
            for column, values in irf.columns.items():
                expected = u.Quantity(reference.data[column.lower()], reference.unit[column.lower()])
                ours_values = values.to_value(expected.unit)
                if column.startswith("SIGMA"):  # Gammapy reads a zero width (an unused Gaussian) as 1 deg
                    ours_values = np.where(ours_values == 0, 1.0, ours_values)
                np.testing.assert_allclose(ours_values, expected.value, rtol=1e-12, err_msg=column)
        else:  # the background's FoV axes in stored column order here: no swap against Gammapy
            np.testing.assert_allclose(irf.data.to_value(reference.unit), reference.data, rtol=1e-12, err_msg=name)
    with pytest.raises(DL3Error, match="no such file"):
        read_irfs(path.parent / "nowhere.fits")
