from medseg.io.naming import sanitize_filename, series_stem


def test_sanitize_removes_path_tricks():
    assert sanitize_filename("../../etc/passwd") == "etc_passwd"
    assert sanitize_filename("AX T1 +C / fs") == "AX_T1_C_fs"
    assert sanitize_filename("Tête") == "Tete"
    assert sanitize_filename("....") == "unnamed"
    assert sanitize_filename(None) == "unnamed"
    assert "/" not in sanitize_filename("a/b\\c\x00d")


def test_series_stem_is_stable_and_safe():
    a = series_stem(3, "AX T1 +C/fs", "1.2.3")
    assert a.startswith("S003_AX_T1_C_fs_")
    assert a == series_stem("3", "AX T1 +C/fs", "1.2.3")
    assert a != series_stem(3, "AX T1 +C/fs", "1.2.4")
    assert series_stem(None, "", "1.2").startswith("S-_series_")
