"""`matmeta eos fit` against ASE's own Birch-Murnaghan fit on EMT energies."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from matmeta.cli.main import main


def emt_rows(symbol, a0):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rows = []
    for s in np.linspace(0.95, 1.05, 7):
        atoms = bulk(symbol, "fcc", a=a0 * s)
        atoms.calc = EMT()
        rows.append({"material": symbol, "volume_A3": atoms.get_volume(),
                     "energy_eV": atoms.get_potential_energy()})
    return rows


def test_eos_cli_matches_ase(tmp_path, capsys):
    from ase.eos import EquationOfState
    from ase.units import GPa

    df = pd.DataFrame(emt_rows("Cu", 3.6) + emt_rows("Pd", 3.9))
    src = tmp_path / "ev.csv"
    df.to_csv(src, index=False)
    assert main(["eos", "fit", str(src), "--out", str(tmp_path / "eos.csv"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["material"] for r in rows] == ["Cu", "Pd"]
    for r in rows:
        cur = df[df.material == r["material"]]
        v0, e0, b0 = EquationOfState(cur.volume_A3.to_numpy(), cur.energy_eV.to_numpy(),
                                     eos="birchmurnaghan").fit()
        assert r["converged"]
        assert math.isclose(r["V0_A3"], v0, rel_tol=1e-6)
        assert math.isclose(r["B0_GPa"], b0 / GPa, rel_tol=1e-5)
        assert math.isclose(r["E0_eV"], e0, rel_tol=1e-6, abs_tol=1e-7)
        assert r["V0_bracketed"] and cur.volume_A3.min() < r["V0_A3"] < cur.volume_A3.max()
    assert (tmp_path / "eos.csv").exists()
    assert "warning" not in capsys.readouterr().err


def test_eos_cli_bad_volume_names_row(tmp_path, capsys):
    src = tmp_path / "bad.csv"
    src.write_text("volume_A3,energy_eV\n10,-1\n-11,-1.1\n12,-1.05\n13,-1\n14,-0.9\n")
    out = tmp_path / "o.csv"
    assert main(["eos", "fit", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 3, column 'volume_A3'" in err and not out.exists()


def test_eos_cli_refuses_missing_group_label(tmp_path, capsys):
    """A row without its material label would silently vanish from the groupby: refused."""
    rows = emt_rows("Cu", 3.6)
    rows[3]["material"] = ""
    src = tmp_path / "nolabel.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    out = tmp_path / "o.csv"
    assert main(["eos", "fit", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nolabel.csv, row 5, column 'material': missing group label" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_eos_cli_degenerate_curves(tmp_path, capsys):
    """One volume measured five times is refused (no curvature to fit); a curve that only
    falls (its minimum beyond the sampled volumes) is fitted but its V0 is marked as an
    extrapolation, with a warning naming it; a NaN energy is named plainly."""
    same = tmp_path / "same.csv"
    same.write_text("volume_A3,energy_eV\n" + "".join(f"10,{-1 - 0.1 * i}\n" for i in range(5)))
    out = tmp_path / "o.csv"
    assert main(["eos", "fit", str(same), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "column 'volume_A3': 1 distinct volume (10 A^3)" in err and not out.exists()
    # Cu's EMT curve on its compressed side only (lattice 86-95% of 3.6 A): energies falling
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rows = []
    for a in 3.6 * np.linspace(0.86, 0.95, 6):
        atoms = bulk("Cu", "fcc", a=a)
        atoms.calc = EMT()
        rows.append({"volume_A3": atoms.get_volume(), "energy_eV": atoms.get_potential_energy()})
    half = tmp_path / "half.csv"
    pd.DataFrame(rows).to_csv(half, index=False)
    frame = pd.read_csv(half)
    assert frame.energy_eV.is_monotonic_decreasing  # the data never turn up
    assert main(["eos", "fit", str(half), "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    row = json.loads(cap.out)[0]
    assert not row["V0_bracketed"] and row["V0_A3"] > frame.volume_A3.max()
    assert "V0 = " in cap.err and "outside the sampled volumes" in cap.err
    nan = tmp_path / "nan.csv"
    nan.write_text("volume_A3,energy_eV\n10,-1\n11,nan\n12,-1.2\n13,-1.3\n14,-1.4\n")
    assert main(["eos", "fit", str(nan), "--out", str(out)]) == 2
    assert "row 3, column 'energy_eV': expected a finite number, got nan" in \
        capsys.readouterr().err
