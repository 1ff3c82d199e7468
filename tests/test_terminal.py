import io

from rich.console import Console

from medseg.terminal import literal

HOSTILE = ["[/]", "[link=file:///etc/passwd]click[/link]", "x\x1b[2Jy", "sub[/x] 000.dcm", "a\\[b]", "\x9b31m", "[bold]"]


def test_hostile_values_print_as_typed_with_controls_escaped():
    console = Console(file=io.StringIO(), color_system=None, width=200)
    for text in HOSTILE:
        console.print(f"series: {literal(text)}", highlight=False)
    out = console.file.getvalue().splitlines()
    expected = [t.replace("\x1b", "\\x1b").replace("\x9b", "\\x9b") for t in HOSTILE]
    assert out == [f"series: {e}" for e in expected]
    assert "\x1b" not in console.file.getvalue()


def test_no_live_hyperlink_reaches_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(literal("[link=file:///etc/passwd]click[/link]"))
    assert "\x1b]8;" not in console.file.getvalue()  # OSC 8 = hyperlink
