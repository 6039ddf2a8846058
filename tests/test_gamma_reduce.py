"""Counts and exposure cubes (fitax.gamma.reduce) against Gammapy 2.1's MapDatasetMaker on
H.E.S.S. DL3 DR1 runs.

Tolerance (issue 13): counts identical; exposure within 1e-4 relative where it is above 1e-6
of its maximum.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from conftest import shared_data
from fitax.gamma.dl3 import DataStore
from fitax.gamma.reduce import counts_cube, evaluate_irf, exposure_cube

# (run, centre, frame, projection): the Crab in ICRS/CAR, MSH 15-52 in Galactic/TAN
CASES = [(23523, (83.633, 22.014), "icrs", "CAR"), (20136, (320.33, -1.19), "galactic", "TAN")]


@pytest.mark.parametrize(("obs_id", "centre", "frame", "projection"), CASES)
def test_counts_and_exposure_equal_gammapy(obs_id, centre, frame, projection):
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.datasets import MapDataset
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import MapAxis, WcsGeom

    energy = MapAxis.from_energy_bounds(0.5, 50, 10, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 100, 20, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(*centre, unit="deg", frame=frame), binsz=0.02, width=(4.0, 3.0), frame=frame, proj=projection, axes=[energy])
    reference = MapDatasetMaker(selection=["counts", "exposure"]).run(
        MapDataset.create(geom, energy_axis_true=energy_true), GammapyDataStore.from_dir(hess).obs(obs_id)
    )
    observation = DataStore.from_dir(hess).observation(obs_id)
    shape = geom.data_shape[1:]

    counts = counts_cube(observation, geom.wcs, shape, energy.edges)
    np.testing.assert_array_equal(counts, reference.counts.data)
    assert counts.sum() > 100

    exposure = exposure_cube(observation, geom.wcs, shape, energy_true.edges)
    expected = reference.exposure.quantity.to_value("m2 s")
    relevant = expected > 1e-6 * expected.max()
    assert exposure.unit == u.Unit("m2 s") and relevant.sum() > 0.5 * expected.size
    np.testing.assert_allclose(exposure.value[relevant], expected[relevant], rtol=1e-4)
    assert np.all(exposure.value[~relevant] <= 1e-6 * expected.max() * 1.0001)


def test_irf_interpolation_equals_gammapy_off_the_nodes():
    """Between and beyond the nodes (extrapolated within the outer bins, 0 beyond the edges),
    on an axis given as nodes (DR1 offsets) and one given as bins (energies)."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore

    aeff = DataStore.from_dir(hess).observation(23523).aeff
    reference = GammapyDataStore.from_dir(hess).obs(23523).aeff
    assert aeff.axes["offset"].edges is None  # nodes 0, 0.5, ..., 2.5 deg
    energy = np.geomspace(0.005, 200, 57)[:, None] * u.TeV
    offset = np.linspace(-0.1, 3.0, 23)[None, :] * u.deg
    ours = evaluate_irf(aeff, energy_true=energy, offset=offset)
    theirs = reference.evaluate(energy_true=energy, offset=offset)
    np.testing.assert_allclose(ours.to_value("m2"), theirs.to_value("m2"), rtol=1e-10, atol=1e-9)
    assert np.any(ours.value == 0) and np.any(ours.value > 0)
    with pytest.raises(ValueError, match=r"give the coordinates \['offset'\]"):
        evaluate_irf(aeff, energy_true=energy)
