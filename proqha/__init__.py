"""proqha: ProQHA progressive mixed-precision quantization, from QAT to deployable QDQ graphs."""

__version__ = "0.1.0"
