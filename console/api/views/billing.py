"""Price lists, invoices (with PDF and CSV), an organisation's balance and top-ups.

Money changes go through ``billing.services``; who may see and do what through
``portal.access``, as on the dashboard.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from billing import services as billing
from billing.documents import invoice_csv, invoice_pdf
from billing.models import Invoice, ModelPrice, PriceList
from billing.selectors import dashboard as reads
from billing.services.common import account_for
from console.api.filters import InvoiceFilter, PriceListFilter
from console.api.serializers.billing import (
    BalanceSerializer,
    InvoiceSerializer,
    LedgerEntrySerializer,
    ModelPriceSerializer,
    ModelPriceSetSerializer,
    PriceListCreateSerializer,
    PriceListSerializer,
    TopUpSerializer,
)
from console.api.views.base import ScopedMixin, service_errors
from console.http import acting_user
from portal.access import Need, get_access, request_scope, require_operator
from portal.models import CatalogModel, Organization


def _price_list_owner(request: Request, slug: str) -> Organization:
    owner = get_access(request.user, slug, need=Need.MANAGE).organization
    if owner.is_tenant:
        raise Http404("Tenants own no price lists.")
    if owner.kind == Organization.Kind.PLATFORM:
        require_operator(request.user)
    return owner


class PriceListViewSet(
    ScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet
):
    """Price lists of the organisations the caller manages (operators: all), each with
    every price version (``effective_from`` says from when it applies)."""

    serializer_class = PriceListSerializer
    filterset_class = PriceListFilter
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[PriceList]:
        if getattr(self, "swagger_fake_view", False):
            return PriceList.objects.none()
        lists = self.scope.filter(PriceList.objects.all(), "owner", need=Need.MANAGE)
        prices = ModelPrice.objects.select_related("model").order_by("model", "-effective_from")
        return (
            lists.select_related("owner")
            .prefetch_related(Prefetch("prices", queryset=prices))
            .order_by("owner__name", "name")
        )

    def get_object(self) -> PriceList:
        found = PriceList.objects.select_related("owner").filter(pk=self.kwargs["pk"]).first()
        if found is None:
            raise Http404("No such price list.")
        _price_list_owner(self.request, found.owner.slug)
        return found

    @extend_schema(request=PriceListCreateSerializer, responses={201: PriceListSerializer})
    def create(self, request: Request) -> Response:
        form = PriceListCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        owner = _price_list_owner(request, data["owner"])
        with service_errors():
            created = billing.price_list_create(
                owner=owner,
                name=data["name"],
                is_default=data["is_default"],
                markup_percent=data.get("markup_percent"),
                actor=acting_user(request),
            )
        return Response(PriceListSerializer(created).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ModelPriceSetSerializer, responses={201: ModelPriceSerializer})
    @action(detail=True, methods=["post"])
    def prices(self, request: Request, pk: str) -> Response:
        """Price one model in this list, from now (or a later moment) on."""
        price_list = self.get_object()
        form = ModelPriceSetSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        model = CatalogModel.objects.filter(public_id=data["model"]).first()
        if model is None:
            return Response({"model": ["No such model."]}, status=status.HTTP_400_BAD_REQUEST)
        with service_errors():
            price = billing.model_price_set(
                price_list=price_list,
                model=model,
                input_per_mtok=data["input_per_mtok"],
                output_per_mtok=data["output_per_mtok"],
                cached_input_per_mtok=data.get("cached_input_per_mtok"),
                request_fee_micros=data["request_fee_micros"],
                effective_from=data.get("effective_from"),
                long_context_prices=data.get("long_context_prices"),
                actor=acting_user(request),
                **{name: data.get(name) for name in billing.OPTIONAL_PRICE_FIELDS},
            )
        return Response(ModelPriceSerializer(price).data, status=status.HTTP_201_CREATED)


class InvoiceViewSet(ScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet):
    """Invoices the caller's organisations received (once issued) or issued (drafts
    too); billing rights needed on either side."""

    serializer_class = InvoiceSerializer
    filterset_class = InvoiceFilter
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Invoice]:
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        invoices = Invoice.objects.select_related("issuer", "customer")
        allowed = self.scope.organization_ids(Need.BILLING)
        if allowed is not None:
            invoices = invoices.filter(
                Q(issuer_id__in=allowed)
                | (Q(customer_id__in=allowed) & ~Q(status=Invoice.Status.DRAFT))
            )
        return invoices.order_by("-period_start", "-id")

    def get_object(self) -> Invoice:
        invoice = (
            Invoice.objects.select_related("issuer", "customer")
            .filter(pk=self.kwargs["pk"])
            .first()
        )
        if invoice is None:
            raise Http404("No such invoice.")
        standing = reads.invoice_access(request_scope(self.request), invoice)
        if standing is None:
            raise Http404("No such invoice.")
        if not (standing.as_issuer or standing.as_customer):
            raise PermissionDenied("Your role does not show invoices.")
        return invoice

    def _document(self, body: bytes, content_type: str, extension: str) -> HttpResponse:
        invoice = self.get_object()
        response = HttpResponse(body, content_type=content_type)
        name = invoice.number or f"draft-{invoice.pk}"
        response["Content-Disposition"] = f'attachment; filename="invoice-{name}.{extension}"'
        return response

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def pdf(self, request: Request, pk: str) -> HttpResponse:
        """The invoice as a PDF document."""
        return self._document(invoice_pdf(self.get_object()), "application/pdf", "pdf")

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def csv(self, request: Request, pk: str) -> HttpResponse:
        """The invoice's lines and totals as CSV."""
        return self._document(invoice_csv(self.get_object()), "text/csv; charset=utf-8", "csv")


class BalanceView(APIView):
    """An organisation's balance, billing mode, limits and this month's spend."""

    @extend_schema(responses=BalanceSerializer)
    def get(self, request: Request, slug: str) -> Response:
        organization = get_access(request.user, slug, need=Need.BILLING).organization
        summary = reads.account_summary(organization)
        account = summary.account
        return Response(
            BalanceSerializer(
                {
                    "organization": organization.slug,
                    "currency": account.currency if account else None,
                    "mode": account.mode if account else None,
                    "balance_micros": summary.balance_micros,
                    "credit_limit_micros": account.credit_limit_micros if account else None,
                    "monthly_budget_micros": account.monthly_budget_micros if account else None,
                    "month_spend_micros": summary.month_spend_micros,
                }
            ).data
        )


class TopUpView(APIView):
    """Top-ups of a customer's balance, by its seller (reseller or operator)."""

    @extend_schema(responses=LedgerEntrySerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        """The latest top-ups, payments and adjustments (anyone with billing rights)."""
        organization = get_access(request.user, slug, need=Need.BILLING).organization
        entries = reads.ledger_entries(reads.account_of(organization))
        return Response(LedgerEntrySerializer(entries, many=True).data)

    @extend_schema(request=TopUpSerializer, responses={201: LedgerEntrySerializer})
    def post(self, request: Request, slug: str) -> Response:
        """Credit the balance with a payment received."""
        organization = get_access(request.user, slug, need=Need.SELL).organization
        if organization.kind == Organization.Kind.PLATFORM:
            raise Http404("The platform is not billed.")
        form = TopUpSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with service_errors():
            entry = billing.account_topup(
                account=account_for(organization),
                amount_micros=form.validated_data["amount_micros"],
                memo=form.validated_data["memo"],
                actor=acting_user(request),
            )
        return Response(LedgerEntrySerializer(entry).data, status=status.HTTP_201_CREATED)
