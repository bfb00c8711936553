# The pacsmesh node image: one process serving DICOMweb (and, as issues land, DIMSE, HL7, FHIR).
FROM python:3.11-slim
RUN useradd --system --home /var/lib/pacsmesh pacsmesh \
 && mkdir -p /var/lib/pacsmesh && chown pacsmesh /var/lib/pacsmesh
WORKDIR /opt/pacsmesh
COPY pyproject.toml README.md ./
COPY node ./node
COPY ledger ./ledger
COPY federated ./federated
# CPU torch first so the project's torch range does not pull CUDA builds.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
USER pacsmesh
ENV NODE_DATA_DIR=/var/lib/pacsmesh NODE_HOST=0.0.0.0 NODE_PORT=8443
EXPOSE 8443
ENTRYPOINT ["pacsmesh", "node", "serve"]
