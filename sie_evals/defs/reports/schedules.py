"""The report job, launched by the nightly chain's last sensor (sensors.py) or by hand."""

import dagster as dg

from sie_evals.defs.reports.assets import eval_report

report_job = dg.define_asset_job("report_job", selection=dg.AssetSelection.assets(eval_report))
