from pathlib import Path

from bench.host import cpu_fields, cpu_flags, describe

# two processors' blocks as Linux writes them; the second's values must not leak into the first's
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 99
model\t\t: 1
model name\t: other
flags\t\t: fpu amx_bf16
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_the_first_processor_block_is_read(tmp_path: Path) -> None:
    fields = cpu_fields(write(tmp_path, CPUINFO))
    assert (fields["cpu family"], fields["model"], fields["model name"]) == ("25", "17", "AMD EPYC")
    assert cpu_flags(write(tmp_path, CPUINFO)) == {
        "fpu",
        "sse2",
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
    }


def test_describe_names_the_matmul_extensions_in_a_fixed_order(tmp_path: Path) -> None:
    described = describe(write(tmp_path, CPUINFO))
    assert described["cpu"] == "AMD EPYC"
    assert (described["cpu_family"], described["cpu_model"]) == ("25", "17")
    assert described["matmul_flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert len(described["load_average"]) == 3


def test_no_cpuinfo_describes_an_unknown_cpu(tmp_path: Path) -> None:
    described = describe(tmp_path / "missing")
    assert (described["cpu"], described["cpu_family"], described["matmul_flags"]) == ("unknown", None, [])
    assert cpu_flags(tmp_path / "missing") == set()
