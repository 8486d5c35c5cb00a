"""The SOAP adapter. spyne is imported here and nowhere else."""
