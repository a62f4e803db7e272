from mei_service.demo.__main__ import main


def test_demo_trains_an_ensemble_whose_meis_resemble_the_true_receptive_fields(
    database, clean_framework_tables, tmp_path
):
    mean_correlation = main(["--out", str(tmp_path), "--workers", "2"])
    assert mean_correlation > 0.8
    assert (tmp_path / "meis.png").read_bytes().startswith(b"\x89PNG")
    assert " ready." in (tmp_path / "workers.log").read_text()
