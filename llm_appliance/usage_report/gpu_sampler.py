"""One GPU sample per GPU from nvidia-smi into gpu_samples; run every minute by a timer.

    appliance-report sample-gpus --dsn DSN [--host NAME] [--nvidia-smi PATH]

Only the standard library and psycopg, so the sampler costs little more than nvidia-smi itself.
"""
import collections
import datetime as dt
import subprocess

from llm_appliance.usage_report.report import ReportError

QUERY = ["--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
# A wedged driver can leave nvidia-smi hanging; the next run is a minute away.
TIMEOUT_S = 30

GpuSample = collections.namedtuple("GpuSample", "gpu_index utilization_pct memory_used_mib")


class SamplerError(ReportError):
    """A ReportError, so the CLI prints it as one line and exits 1."""


def _number(field, convert):
    # nvidia-smi writes "[N/A]" or "[Not Supported]" where a GPU cannot report a field
    # (utilisation with MIG enabled, for one): an unknown value, not a failure.
    if field.startswith("[") and field.endswith("]"):
        return None
    return convert(field)


def parse_gpu_query(text):
    """nvidia-smi's `index, utilization.gpu, memory.used` CSV (no header, no units) -> GpuSamples."""
    samples = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 3:
                raise ValueError
            samples.append(GpuSample(int(fields[0]), _number(fields[1], float),
                                     _number(fields[2], lambda f: int(float(f)))))
        except ValueError:
            raise SamplerError("unexpected line from nvidia-smi (want index, utilization.gpu, memory.used): %r"
                               % line.strip()) from None
    return samples


def _first_line(*texts):
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()
    return "no output"


def query_gpus(nvidia_smi="nvidia-smi"):
    """Run nvidia-smi once and parse its answer; any failure is a one-line SamplerError."""
    try:
        result = subprocess.run([nvidia_smi] + QUERY, capture_output=True, text=True, timeout=TIMEOUT_S,
                                check=False)
    except FileNotFoundError:
        raise SamplerError("nvidia-smi not found (%s): install the NVIDIA driver or pass --nvidia-smi PATH"
                           % nvidia_smi) from None
    except subprocess.TimeoutExpired:
        raise SamplerError("%s did not answer within %d s" % (nvidia_smi, TIMEOUT_S)) from None
    except OSError as exc:
        raise SamplerError("cannot run %s: %s" % (nvidia_smi, exc.strerror)) from None
    if result.returncode != 0:
        # nvidia-smi writes its own errors ("couldn't communicate with the NVIDIA driver") to stdout.
        raise SamplerError("%s failed (exit %d): %s" % (nvidia_smi, result.returncode,
                                                        _first_line(result.stderr, result.stdout)))
    samples = parse_gpu_query(result.stdout)
    if not samples:
        raise SamplerError("%s reported no GPUs" % nvidia_smi)
    return samples


def store_samples(connection, host, samples, sampled_at=None):
    """Insert one gpu_samples row per GPU, all with the same time (now, UTC, unless given)."""
    import psycopg

    sampled_at = sampled_at or dt.datetime.now(dt.UTC)
    try:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO gpu_samples (sampled_at, host, gpu_index, utilization_pct, memory_used_mib)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(sampled_at, host) + tuple(sample) for sample in samples])
        connection.commit()
    except psycopg.Error as exc:
        raise SamplerError("cannot store GPU samples: %s" % _first_line(str(exc))) from None
    return len(samples)
