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
        np.testing.assert_allclose(irf.data.to_value(reference.unit), reference.data, rtol=1e-12, err_msg=name)


# Runs of targets with no known TeV source in their field (NGC 253, a H.E.S.S. source, and the
# LMC and SMC fields of SN 1987A and 47 Tuc are left out).
EMPTY_FIELDS = ("NGC 1399", "Arp 220", "NGC 1068", "Q J22548-2725", "GRB 040425 north", "custom", "AE Aqr", "PSR J0437-4715")


def _fov_log_likelihood(observation, background: np.ndarray) -> float:
    """Log-likelihood of the run's events 0.3-2 deg from the pointing and 0.5-10 TeV under
    ``background`` (energy, fov_lon, fov_lat) as their density, normalised per energy bin over
    that annulus (the same for every symmetry of a square FoV grid): which of the readings of
    one array the events favour."""
    bkg = observation.bkg
    energy_edges, lon_edges, lat_edges = (bkg.axes[n].edges.to_value(u) for n, u in (("energy", "TeV"), ("fov_lon", "deg"), ("fov_lat", "deg")))
    events = observation.events
    offsets = SkyCoord(events["RA"].quantity, events["DEC"].quantity).transform_to(observation.pointing.skyoffset_frame())
    lon, lat = offsets.lon.wrap_at(180 * u.deg).deg, offsets.lat.deg
    lon = lon if bkg.fov_alignment == "REVERSE_LON_RADEC" else -lon  # as Gammapy's FoV frames
    energy = events["ENERGY"].quantity.to_value("TeV")
    radius = np.hypot(lon, lat)
    keep = (radius > 0.3) & (radius < 2.0) & (energy > 0.5) & (energy < 10)
    e, i, j = (np.searchsorted(edges, x[keep]) - 1 for edges, x in ((energy_edges, energy), (lon_edges, lon), (lat_edges, lat)))
    centre_lon, centre_lat = 0.5 * (lon_edges[1:] + lon_edges[:-1]), 0.5 * (lat_edges[1:] + lat_edges[:-1])
    annulus = np.hypot(centre_lon[:, None], centre_lat[None, :])
    norm = (background * ((annulus > 0.3) & (annulus < 2.0))).sum(axis=(1, 2))
    return float(np.sum(np.log(background[e, i, j] / norm[e])))


def _square_symmetries(values: np.ndarray) -> list[np.ndarray]:
    """The 8 readings of a (energy, n, n) array's FoV axes: as is, mirrored, swapped."""
    return [v for swapped in (values, values.transpose(0, 2, 1)) for v in (swapped, swapped[:, ::-1], swapped[:, :, ::-1], swapped[:, ::-1, ::-1])]


def test_dr1_background_orientation_is_the_one_the_events_favour(hess):
    """The DR1 background arrays are stored (ENERG, DETY, DETX) in FITS order against GADF's
    (DETX, DETY, ENERG) columns, and their longitudes run eastwards (Gammapy reads them so:
    ``REVERSE_LON_RADEC``). Of the 8 readings of each array, events of empty fields are most
    likely under that one (measured: by 56 in log-likelihood over the next, 207 over GADF's
    column order, 11 runs)."""
    store = DataStore.from_dir(hess)
    objects = {int(i): str(o).strip() for i, o in zip(store.obs_table["OBS_ID"], store.obs_table["OBJECT"])}
    totals = np.zeros(8)
    for obs_id in (i for i, o in objects.items() if o in EMPTY_FIELDS):
        observation = store.observation(obs_id)
        assert observation.bkg.fov_alignment == "REVERSE_LON_RADEC"
        totals += [_fov_log_likelihood(observation, v) for v in _square_symmetries(observation.bkg.data.value)]
    ours, others = totals[0], np.sort(totals[1:])
    assert ours - others[-1] > 30


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
    observation = DataStore.from_dir(store_path).observation(20136)  # IRFs are read when used
    assert observation.edisp is not None
    with pytest.raises(DL3Error, match=r"obs 20136: aeff HDU 'AEFF_X' of .*: the file has no such HDU \(it has EVENTS, GTI, AEFF"):
        observation.aeff

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
    (tmp_path / "README.rst").write_text("not FITS")
    with pytest.raises(DL3Error, match=r"README.rst: not a readable FITS file"):
        read_irfs(tmp_path / "README.rst")


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
        else:
            np.testing.assert_allclose(irf.data.to_value(reference.unit), reference.data, rtol=1e-12, err_msg=name)
    with pytest.raises(DL3Error, match="no such file"):
        read_irfs(path.parent / "nowhere.fits")


def _aeff_file(hess, tmp_path, change) -> str:
    """DR1 run 20136's effective area HDU, its table changed by ``change``, alone in a file."""
    with fits.open(hess / "data" / "hess_dl3_dr1_obs_id_020136.fits.gz") as hdul:
        table = Table.read(hdul["AEFF"])
        header = hdul["AEFF"].header
    change(table)
    hdu = fits.table_to_hdu(table)
    hdu.header.update({key: header[key] for key in ("HDUCLAS1", "HDUCLAS2", "HDUCLAS3", "HDUCLAS4")})
    path = tmp_path / "aeff.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def test_irf_columns_units_and_layouts_are_read_or_refused_clearly(hess, tmp_path):
    def add_reco_area(table):  # as CTA caldb files carry: a second value column
        table["EFFAREA_RECO"] = table["EFFAREA"] * 0.5

    aeff = read_irfs(_aeff_file(hess, tmp_path, add_reco_area))["aeff"]
    assert list(aeff.columns) == ["EFFAREA"] and aeff.data.unit == u.m**2

    def flatten(table):
        table.replace_column("EFFAREA", Table.Column([table["EFFAREA"][0].ravel()], unit="m2"))

    with pytest.raises(DL3Error, match="column EFFAREA has no TDIM keyword"):
        read_irfs(_aeff_file(hess, tmp_path, flatten))

    def bad_unit(table):
        table["EFFAREA"].unit = u.Unit("furlongs2", parse_strict="silent")

    with pytest.raises(DL3Error, match="column EFFAREA has the unit 'furlongs2', which astropy cannot read"):
        read_irfs(_aeff_file(hess, tmp_path, bad_unit))

    def drop_offsets(table):
        table.remove_columns(["THETA_LO", "THETA_HI"])

    with pytest.raises(DL3Error, match=r"an IRF of class aeff_2d has the axes energy_true, offset; its \*_LO/\*_HI columns give ENERG \(energy_true\)"):
        read_irfs(_aeff_file(hess, tmp_path, drop_offsets))


def test_background_without_unit_is_gammapys_default_and_events_need_an_energy_unit(hess, tmp_path):
    store_path = _copy_store(hess, tmp_path)
    run = store_path / "data" / "hess_dl3_dr1_obs_id_020136.fits.gz"
    expected = DataStore.from_dir(store_path).observation(20136).bkg.data
    with fits.open(run) as hdul:
        del hdul["BKG"].header["TUNIT7"]  # BKG, the 7th column
        del hdul["EVENTS"].header[f"TUNIT{hdul['EVENTS'].columns.names.index('RA') + 1}"]
        hdul.writeto(run, overwrite=True)
    with pytest.warns(UserWarning, match=r"column RA has no readable unit; taken as deg"):
        observation = DataStore.from_dir(store_path).observation(20136)
    with pytest.warns(UserWarning, match=r"column BKG has no unit; taken as s-1 MeV-1 sr-1"):
        background = observation.bkg
    assert background.data.unit == u.Unit("s-1 MeV-1 sr-1") and observation.events["RA"].unit == u.deg
    np.testing.assert_array_equal(observation.bkg.data.value, expected.to_value("s-1 MeV-1 sr-1"))

    with fits.open(run) as hdul:
        del hdul["EVENTS"].header[f"TUNIT{hdul['EVENTS'].columns.names.index('ENERGY') + 1}"]
        hdul.writeto(run, overwrite=True)
    with pytest.raises(DL3Error, match="column ENERGY needs a unit"), pytest.warns(UserWarning):
        DataStore.from_dir(store_path).observation(20136)
